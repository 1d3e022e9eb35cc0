"""The thin CLI: --help everywhere, strict configs with one-line errors and exit code 2, determinism."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltr.cli import app

runner = CliRunner()

COMMANDS = [[], ["world"], ["load-esci"], ["simulate-engagement"], ["label"], ["label", "calibrate"],
            ["features", "build"], ["features", "apply"], ["features", "materialize"], ["run"],
            ["experiments"], ["evaluate"], ["serve"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "ltr")
def test_help_everywhere(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, needle", [
    ("seed: 7\ntrain:\n  n_estimatorz: 3\n", "train.n_estimatorz"),
    ("dataset:\n  world:\n    n_products: many\n", "dataset.world.n_products"),
    ("tune:\n  n_trials: -1\n", "tune.n_trials"),
    ("labels:\n  backend: gpt9\n", "labels.backend"),
    ("seed: [1\n", "not valid YAML"),
])
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path, text, needle):
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--config", str(_write(tmp_path, text))])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "w").exists(), "a rejected config must not write anything"


def test_missing_config_file(tmp_path):
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2
    assert "not found" in res.output and "--config" in res.output


def test_missing_dataset_is_clear(tmp_path):
    res = runner.invoke(app, ["label", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "l.parquet")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.parquet"))}


def test_world_cli_is_deterministic_per_seed(tmp_path):
    cfg = _write(tmp_path, "dataset:\n  world: {n_products: 300, n_queries: 20, n_candidates: 10, sessions: 300}\n")
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        res = runner.invoke(app, ["world", "--out", str(tmp_path / name), "--seed", str(seed), "--config", str(cfg)])
        assert res.exit_code == 0, res.output
        outs.append(_digests(tmp_path / name))
    assert outs[0] == outs[1] and len(outs[0]) >= 6
    assert all(outs[0][k] != outs[2][k] for k in outs[0])
