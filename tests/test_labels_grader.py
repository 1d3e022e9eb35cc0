"""Fine-tuned local grader: tiny fit/save/load/grade, determinism, row independence, bad input.
The full held-out ESCI comparison against the zero-shot grader is `slow`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from labels.backends.base import Pair
from labels.backends.grader import (
    FineTunedGrader,
    GraderBackend,
    GraderConfig,
    ZeroShotBiEncoderGrader,
)
from labels.metrics import spearman

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny():
    """4 queries x 4 products: an exact match, a related accessory, an unrelated item, another match."""
    qs, ps, gs = [], [], []
    for q, kind in [
        ("wireless mouse", "Mouse"),
        ("usb c cable", "Cable"),
        ("coffee mug", "Mug"),
        ("yoga mat", "Mat"),
    ]:
        for j, t in enumerate([f"Acme {q} deluxe", f"{kind} holder stand", "garden hose 50 ft", f"Best {q}"]):
            qs.append(q)
            ps.append({"title": t, "brand": "Acme", "category": f"Home > {kind}"})
            gs.append([3, 1, 0, 3][j])
    return qs, ps, np.array(gs)


def _cfg(**kw) -> GraderConfig:
    return GraderConfig(progress=False, inner_folds=2, **kw)


@pytest.fixture(scope="module")
def fitted():
    qs, ps, gs = _tiny()
    return FineTunedGrader(config=_cfg()).fit(qs, ps, gs)


def test_fit_save_load_grade_roundtrip(tmp_path, fitted):
    qs, ps, gs = _tiny()
    pr = fitted.predict_proba(qs, ps)
    assert pr.shape == (len(qs), 4) and np.allclose(pr.sum(1), 1) and (pr >= 0).all()
    # it learned the order of the seed grades (exact > accessory > unrelated)
    assert spearman(pr @ np.arange(4), gs) > 0.5
    d = fitted.save(tmp_path / "grader")
    g2 = FineTunedGrader.load(d)
    assert np.allclose(g2.predict_proba(qs, ps), pr, atol=1e-9)
    assert g2.version == fitted.version and g2.meta["n_train_pairs"] == len(qs)
    be = GraderBackend(d, batch_size=3, progress=False)
    seen = []
    pairs = [Pair(f"q{i}", q, f"P{i}", p) for i, (q, p) in enumerate(zip(qs, ps))]
    res = be.grade(pairs, on_result=lambda p, r: seen.append(p))
    assert len(res) == len(pairs) and seen == pairs and be.model.endswith(fitted.version)
    assert np.allclose([r.probs for r in res], pr, atol=1e-6)
    assert [r.grade for r in res] == fitted.predict_grade(pr).tolist()


def test_rows_do_not_depend_on_the_batch(fitted):
    """A resumed run grades a subset of a query's pairs; each row must come out the same."""
    qs, ps, _ = _tiny()
    full = fitted.predict_proba(qs, ps)
    sub = [5, 0, 13]
    assert np.allclose(fitted.predict_proba([qs[i] for i in sub], [ps[i] for i in sub]), full[sub], atol=1e-6)


def test_maxsim_features_match_terms_and_survive_memo_clears():
    """Late interaction (opt-in features): a title containing every query word covers each query piece (max
    cosine ~1); an unrelated title covers them worse. Token vectors come back right even when the memo has to
    be cleared."""
    from labels.backends.grader import DEFAULT_FEATURES, MAXSIM_FEATURES
    from ltr.data.encoder import TextEncoder

    tq, tp, tg = _tiny()
    fitted = FineTunedGrader(config=_cfg(features=DEFAULT_FEATURES + MAXSIM_FEATURES)).fit(tq, tp, tg)
    pr = fitted.predict_proba(tq[:5], tp[:5])
    assert pr.shape == (5, 4) and np.allclose(pr.sum(1), 1)
    qs = ["coffee mug", "coffee mug"]
    ps = [{"title": "Acme coffee mug deluxe"}, {"title": "garden hose 50 ft"}]
    mean, low = fitted._maxsim(qs, ps)
    assert mean[0] > 0.8 and mean[0] > mean[1] and low[0] > low[1] and (low <= mean + 1e-9).all()
    enc = TextEncoder(fitted.encoder_path, max_token_memo=2)
    texts = ["coffee mug", "yoga mat", "usb c cable", "coffee mug"]
    vecs = enc.token_vectors(texts, 16)
    assert [len(v) for v in vecs] == [len(enc.tok.tokenize(t)) for t in texts]
    assert np.allclose(vecs[0], vecs[3]) and vecs[0].dtype == np.float16
    assert np.allclose(np.linalg.norm(vecs[1].astype(np.float32), axis=1), 1, atol=1e-2)
    assert np.allclose(enc.token_vectors(["coffee mug"], 16)[0], vecs[0])


def test_fit_is_deterministic_and_version_tracks_inputs(fitted):
    qs, ps, gs = _tiny()
    again = FineTunedGrader(config=_cfg()).fit(list(reversed(qs)), list(reversed(ps)), gs[::-1])
    assert again.version == fitted.version  # same rows, any order, same config -> same cache keys
    assert np.allclose(again.predict_proba(qs, ps), fitted.predict_proba(qs, ps), atol=1e-6)
    g2 = gs.copy()
    g2[1] = 2
    assert FineTunedGrader(config=_cfg()).fit(qs, ps, g2).version != fitted.version
    assert FineTunedGrader(config=_cfg(l2=3.0)).fit(qs, ps, gs).version != fitted.version


def test_fit_rejects_bad_input(tmp_path):
    g = FineTunedGrader(config=_cfg())
    with pytest.raises(ValueError, match="0..3"):
        g.fit(["a"] * 8, [{"title": "x"}] * 8, [5] * 8)
    with pytest.raises(ValueError, match="0..3"):
        g.fit(["a"] * 8, [{"title": "x"}] * 8, [1.5] * 8)
    with pytest.raises(ValueError, match="same length"):
        g.fit(["a"] * 8, [{"title": "x"}] * 7, [1] * 8)
    with pytest.raises(ValueError, match="at least two different grades"):
        g.fit(["a"] * 8, [{"title": "x"}] * 8, [2] * 8)
    with pytest.raises(ValueError, match="features"):
        GraderConfig(features=("cos", "no_such_feature"))
    with pytest.raises(RuntimeError, match="not fitted"):
        g.predict_proba(["a"], [{"title": "x"}])
    with pytest.raises(FileNotFoundError, match="no fitted grader"):
        FineTunedGrader.load(tmp_path)


def test_load_detects_corrupt_directory(tmp_path, fitted):
    d = fitted.save(tmp_path / "g")
    z = dict(np.load(d / "weights.npz"))
    z["reference"] = z["reference"] * 0.5
    np.savez(d / "weights.npz", **z)
    with pytest.raises(ValueError, match="corrupt"):
        FineTunedGrader.load(d)
    d2 = fitted.save(tmp_path / "g2")
    meta = json.loads((d2 / "grader.json").read_text())
    meta["format_version"] = 1
    (d2 / "grader.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="re-fit"):
        FineTunedGrader.load(d2)


def test_zero_shot_baseline_orders_tiny_set():
    qs, ps, gs = _tiny()
    zs = ZeroShotBiEncoderGrader().fit(qs, ps, gs)
    cos = zs.cosine(qs, ps)
    assert spearman(cos, gs) > 0.3 and zs.predict_grade(cos).shape == (len(qs),)


@pytest.mark.slow
def test_fine_tuned_beats_zero_shot_on_heldout_esci(tmp_path):
    from bench.bench_grader import esci_dir, run

    if not (esci_dir() / "judgments.parquet").exists():
        pytest.skip(f"ESCI sample not found at {esci_dir()} (set LTR_ESCI_DIR)")
    res = run(tmp_path, test_frac=0.3, seeds=[0])
    assert res["mean"]["fine_tuned"]["kappa"] > res["mean"]["zero_shot"]["kappa"]
    assert res["mean"]["fine_tuned"]["spearman"] > res["mean"]["zero_shot"]["spearman"]


def test_unknown_grader_feature_in_run_config_is_named(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from labels.config import LabelConfig
    from labels.run import fit_grader_on_dataset

    qs, ps, gs = _tiny()
    prods = pd.DataFrame([{**p, "product_id": f"P{i}"} for i, p in enumerate(ps)])
    judg = pd.DataFrame({"query_id": qs, "query": qs, "product_id": prods["product_id"], "grade": gs})
    # the config is rejected when it is read, before any fitting starts
    with pytest.raises(ValueError, match=r"(?s)grader\.features.*maxsim_typo"):
        cfg = LabelConfig(grader={"features": ["cos", "maxsim_typo"]})
        fit_grader_on_dataset(SimpleNamespace(judgments=judg, products=prods), tmp_path, cfg)
    assert not (tmp_path / "grader").exists()
