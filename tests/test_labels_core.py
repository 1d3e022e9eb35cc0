"""Prompts, polarization, metrics, calibration, cost, cache, imported judgments, config."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from labels.backends.base import LabelResult, Pair
from labels.backends.imported import ImportError_, import_labels
from labels.cache import LabelCache
from labels.calibration import calibrate
from labels.config import LabelConfig
from labels.cost import CostMeter, price_for
from labels.metrics import apply_thresholds, quadratic_kappa, quantile_thresholds, spearman, tune_thresholds
from labels.polarize import plot_polarization, polarize
from labels.prompts import DEFAULT_PROMPT_VERSION, get_prompt
from ltr.data.schemas import query_id


def test_prompt_has_versioned_umbrela_steps_and_truncates():
    p = get_prompt(DEFAULT_PROMPT_VERSION)
    msgs = p.messages("red shoes", {"title": "Runner", "brand": "Acme", "description": "word " * 500,
                                    "bullet_points": None, "category": "Shoes"})
    u = msgs[1]["content"]
    assert "Intent" in u and "Match" in u and "single digit 0, 1, 2 or 3" in u and "Brand: Acme" in u
    assert "Bullet points" not in u and len(u) < 2500
    with pytest.raises(ValueError, match="prompt_version"):
        get_prompt("nope")


def test_polarize_vectorised_rescaled_and_validated(tmp_path):
    s = np.linspace(0, 1, 11)
    y = polarize(s, 10, 0.5)
    assert y[0] == pytest.approx(0) and y[-1] == pytest.approx(1) and y[5] == pytest.approx(0.5)
    assert np.all(np.diff(y) > 0)
    raw = polarize(s, 10, 0.5, rescale=False)
    assert raw[0] > 0 and raw[-1] < 1
    assert polarize(np.array([0.3]), 2.0, 0.2, rescale=False)[0] == pytest.approx(1 / (1 + np.exp(-0.2)))
    with pytest.raises(ValueError, match="alpha"):
        polarize(s, 0, 0.5)
    with pytest.raises(ValueError, match="within"):
        polarize([1.5], 5, 0.5)
    png = plot_polarization(8, 0.4, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_known_values():
    y = [0, 1, 2, 3, 3, 2]
    assert quadratic_kappa(y, y) == pytest.approx(1.0)
    from sklearn.metrics import cohen_kappa_score
    pred = [0, 2, 2, 3, 1, 0]
    assert quadratic_kappa(y, pred) == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert list(apply_thresholds([0.1, 0.5, 0.9], [0.2, 0.5, 0.8])) == [0, 2, 3]
    v = np.arange(100) / 100
    g = np.repeat([0, 1, 2, 3], 25)
    assert np.bincount(apply_thresholds(v, quantile_thresholds(v, g)), minlength=4).tolist() == [25, 25, 25, 25]
    rng = np.random.default_rng(0)
    noisy = g + rng.normal(0, 0.8, 100)
    t = tune_thresholds(noisy, g)
    assert (quadratic_kappa(g, apply_thresholds(noisy, t))
            >= quadratic_kappa(g, apply_thresholds(noisy, [0.5, 1.5, 2.5])))


def _labels(qs, pids, scores, grades=None):
    p = np.zeros((len(scores), 4))
    for i, s in enumerate(scores):
        p[i, int(round(s * 3))] = 1
    d = {"query_id": [query_id(q) for q in qs], "product_id": pids, "score": scores,
         **{f"p{k}": p[:, k] for k in range(4)}, "backend": "t", "model": "m", "prompt_version": "v", "cost": 0.0,
         "created_at": pd.Timestamp("2026-01-01", tz="UTC")}
    if grades is not None:
        d["grade"] = grades
    return pd.DataFrame(d)


def test_calibration_report(tmp_path):
    j = pd.DataFrame({"query": ["a", "a", "b", "b"], "product_id": ["1", "2", "3", "4"], "grade": [3, 0, 2, 1]})
    lab = _labels(["a", "a", "b", "b"], ["1", "2", "3", "4"], [1.0, 0.0, 2 / 3, 2 / 3])
    rep = calibrate(lab, j, out_dir=tmp_path)
    assert rep["n_pairs"] == 4 and rep["accuracy"] == 0.75
    assert rep["confusion_matrix"]["counts"][1][2] == 1
    assert rep["per_grade"]["E"]["recall"] == 1.0
    assert json.loads((tmp_path / "calibration.json").read_text())["kappa_quadratic"] == rep["kappa_quadratic"]
    assert "| accuracy |" in (tmp_path / "calibration.md").read_text()
    with pytest.raises(ValueError, match="share no"):
        calibrate(_labels(["z"], ["9"], [0.0]), j)


def test_cost_meter_never_exceeds_budget():
    m = CostMeter(max_dollars=1.0)
    assert m.reserve(0.6)
    assert not m.reserve(0.6)
    m.settle(0.6, 0.5, 100, 1)
    assert m.reserve(0.5) and not m.reserve(0.01)
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini") and price_for("local") == (0, 0)


def test_cache_roundtrip_key_and_commit(tmp_path):
    c = LabelCache(tmp_path / "c.sqlite")
    pr = Pair("q1", "Red Shoes", "P1", {"title": "Runner"})
    c.put(pr, LabelResult("q1", "P1", (0.1, 0.2, 0.3, 0.4), "b", "m", "v", 10, 1, 0.01))
    # same text under another id is a hit; changed product text or prompt version is not
    same = Pair("q9", "red  shoes", "P9", {"title": "Runner"})
    got = c.get_many("b", "m", "v", [same])
    assert list(got.values())[0].probs == (0.1, 0.2, 0.3, 0.4) and list(got.values())[0].product_id == "P9"
    assert not c.get_many("b", "m", "v2", [pr]) and not c.get_many("b", "m", "v", [Pair("q1", "Red Shoes", "P1",
                                                                                      {"title": "Runner 2"})])
    c.close()
    c2 = LabelCache(tmp_path / "c.sqlite")  # committed: a new connection sees it
    assert c2.count() == 1
    c2.close()
    (tmp_path / "bad.sqlite").write_text("not a database" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite"):
        LabelCache(tmp_path / "bad.sqlite").count()


def test_imported_formats(tmp_path):
    (tmp_path / "j.json").write_text(json.dumps({"judgmentRatings": [
        {"query": "red shoes", "ratings": [{"docId": "P1", "rating": "3"}, {"docId": "P2", "rating": "0"}]}]}))
    lab = import_labels(tmp_path / "j.json", "opensearch")
    assert lab.set_index("product_id")["score"].to_dict() == {"P1": 1.0, "P2": 0.0}
    assert set(lab["query_id"]) == {query_id("red shoes")}
    (tmp_path / "q.txt").write_text("red shoes 0 P1 2\nred_x 0 P2 1\n")
    with pytest.raises(ImportError_, match="qid iter docid rel"):
        import_labels(tmp_path / "q.txt", "trec")
    (tmp_path / "q2.txt").write_text(f"{query_id('red shoes')} 0 P1 2\n")
    assert import_labels(tmp_path / "q2.txt", "trec")["p2"].tolist() == [1.0]
    pd.DataFrame({"query": ["a"], "product_id": ["P1"], "esci_label": ["S"]}).to_parquet(tmp_path / "e.parquet")
    assert import_labels(tmp_path / "e.parquet", "esci")["score"].tolist() == [pytest.approx(2 / 3)]
    pd.DataFrame({"query": ["a"], "product_id": ["P1"], "grade": [5]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ImportError_, match="within"):
        import_labels(tmp_path / "c.csv", "csv")


def test_config_forbids_unknown_and_checks_sections():
    assert LabelConfig().backend == "grader"
    with pytest.raises(ValidationError, match="extra"):
        LabelConfig.model_validate({"backend": "grader", "bogus": 1})
    with pytest.raises(ValidationError, match="causal_lm"):
        LabelConfig(backend="causal_lm")
    with pytest.raises(ValidationError, match="prompt_version"):
        LabelConfig(prompt_version="v0")
