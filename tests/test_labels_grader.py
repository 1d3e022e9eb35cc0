"""Fine-tuned local grader: tiny fit/save/load/grade; the full held-out comparison is `slow`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from labels.backends.base import Pair
from labels.backends.grader import FineTunedGrader, GraderBackend, GraderConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny():
    qs, ps, gs = [], [], []
    for i, (q, kind) in enumerate([("wireless mouse", "Mouse"), ("usb c cable", "Cable"), ("coffee mug", "Mug"),
                                   ("yoga mat", "Mat")] * 1):
        for j, t in enumerate([f"Acme {q} deluxe", f"{kind} holder stand", "garden hose 50 ft", f"Best {q}"]):
            qs.append(q)
            ps.append({"title": t, "brand": "Acme", "category": f"Home > {kind}"})
            gs.append([3, 1, 0, 3][j])
    return qs * 2, ps * 2, np.array(gs * 2)


def test_fit_save_load_grade_roundtrip(tmp_path):
    qs, ps, gs = _tiny()
    g = FineTunedGrader(config=GraderConfig(epochs=1, n_unfrozen=1, batch_size=8, progress=False))
    g.fit(qs, ps, gs)
    pr = g.predict_proba(qs, ps)
    assert pr.shape == (len(qs), 4) and np.allclose(pr.sum(1), 1) and (pr >= 0).all()
    d = g.save(tmp_path / "grader")
    g2 = FineTunedGrader.load(d)
    assert np.allclose(g2.predict_proba(qs, ps), pr, atol=1e-5)
    assert g2.version == g.version and g2.meta["n_train_pairs"] == len(qs)
    be = GraderBackend(d)
    seen = []
    res = be.grade([Pair("q", qs[0], "P0", ps[0]), Pair("q", qs[2], "P2", ps[2])], on_result=lambda p, r: seen.append(p))
    assert len(res) == 2 and len(seen) == 2 and be.model.endswith(g.version)
    assert res[0].probs == pytest.approx(tuple(pr[0]), abs=1e-5)


def test_fit_rejects_bad_input(tmp_path):
    g = FineTunedGrader(config=GraderConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="0..3"):
        g.fit(["a"] * 8, [{"title": "x"}] * 8, [5] * 8)
    with pytest.raises(ValueError, match="same length"):
        g.fit(["a"] * 8, [{"title": "x"}] * 7, [1] * 8)
    with pytest.raises(FileNotFoundError, match="no fitted grader"):
        FineTunedGrader.load(tmp_path)


@pytest.mark.slow
def test_fine_tuned_beats_zero_shot_on_heldout_esci(tmp_path):
    from bench.bench_grader import esci_dir, run
    if not (esci_dir() / "judgments.parquet").exists():
        pytest.skip(f"ESCI sample not found at {esci_dir()} (set LTR_ESCI_DIR)")
    res = run(tmp_path, test_frac=0.3, seed=0)
    assert res["fine_tuned"]["kappa"] > res["zero_shot"]["kappa"]
    assert res["fine_tuned"]["spearman"] > res["zero_shot"]["spearman"]
