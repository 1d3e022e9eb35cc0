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
            ["experiments"], ["evaluate"], ["serve"], ["ingest-ubi"]]


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


# --- bad input: one line naming the problem and the fix, exit code 2, nothing written ----------------------

def _one_line_exit_2(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def _bad_config(tmp_path: Path, kind: str) -> Path:
    if kind == "a directory":
        (tmp_path / "configs").mkdir()
        return tmp_path / "configs"
    p = tmp_path / "cfg.yaml"
    p.write_bytes({"non-UTF-8": "seed: 7\nlabels: {prompt_version: caf\xe9}\n".encode("latin-1"),
                   "empty": b"# nothing but a comment\n\n"}[kind])
    return p


@pytest.mark.parametrize("kind, needle", [("a directory", "is a directory"), ("non-UTF-8", "not UTF-8 text"),
                                          ("empty", "the config file is empty")])
def test_unusable_config_files(tmp_path, kind, needle):
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--config", str(_bad_config(tmp_path, kind))])
    _one_line_exit_2(res, needle)
    assert "Fix:" in res.output
    assert not (tmp_path / "w").exists()


def test_negative_seed(tmp_path):
    _one_line_exit_2(runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--seed", "-1"]), "seed -1")
    cfg = _write(tmp_path, "seed: -3\n")
    _one_line_exit_2(runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--config", str(cfg)]), "seed -3")
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An existing MLflow store with no model in it (a store has to exist for 'no such model' to be the error)."""
    from ltr import tracking as T

    d = tmp_path_factory.mktemp("cli-registry")
    with T.using_tracking(f"sqlite:///{d}/mlflow.db", "cli-test", (d / "artifacts").as_uri()):
        pass
    return f"sqlite:///{d}/mlflow.db"


def test_unknown_model(registry, tmp_path):
    from ltr import tracking as T
    from ltr.serving.demo import demo_dataset

    ds = demo_dataset(tmp_path / "ds", n_queries=3, impressions=False)
    out = tmp_path / "eval.json"
    with T.using_tracking(registry):                             # the CLI points MLflow at it; put it back
        res = runner.invoke(app, ["evaluate", "--dataset", str(ds), "--model", "models:/nope@champion",
                                  "--out", str(out), "--tracking-uri", registry])
    _one_line_exit_2(res, "cannot resolve model 'models:/nope@champion'")
    assert "Fix:" in res.output and not out.exists()


def test_missing_tracking_store_is_not_created(tmp_path, monkeypatch):
    from ltr.serving.demo import demo_dataset

    ds = demo_dataset(tmp_path / "ds", n_queries=3, impressions=False)
    monkeypatch.chdir(tmp_path)                                  # the default store would be ./mlruns/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["evaluate", "--dataset", str(ds), "--model", "models:/x@champion", "--out", "e.json"])
    _one_line_exit_2(res, "tracking store sqlite:///mlruns/mlflow.db does not exist")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["--run-dir", "no/such/run"], "run_dir=no/such/run does not exist"),
    (["--port", "99999"], "port must be 0..65535, got 99999"),
])
def test_serve_bad_settings(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(runner.invoke(app, ["serve", *args]), needle)
    assert list(tmp_path.iterdir()) == []                        # no store, no log dir


def test_empty_judgments_say_no_rows(tmp_path):
    import pandas as pd

    from ltr.serving.demo import demo_dataset

    ds = demo_dataset(tmp_path / "ds", n_queries=3, impressions=False)
    pd.DataFrame({"query": [], "product_id": [], "grade": []}).to_parquet(ds / "judgments.parquet")
    for cmd in (["evaluate", "--dataset", str(ds), "--model", "models:/x@champion", "--out", str(tmp_path / "e.json")],
                ["label", "--dataset", str(ds), "--out", str(tmp_path / "l.parquet")]):
        _one_line_exit_2(runner.invoke(app, cmd), "the judgments table has no rows")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "l.parquet").exists()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    """A tracking.uri written in the config wins; else $MLFLOW_TRACKING_URI; else the default."""
    from ltr.cli import _config
    from ltr.tracking import DEFAULT_TRACKING_URI

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _config(None).tracking.uri == DEFAULT_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from/env.db")
    assert _config(None).tracking.uri == "sqlite:///from/env.db"
    assert _config(_write(tmp_path, "tracking: {experiment: x}\n")).tracking.uri == "sqlite:///from/env.db"
    assert _config(_write(tmp_path, "tracking: {uri: 'sqlite:///file.db'}\n")).tracking.uri == "sqlite:///file.db"
