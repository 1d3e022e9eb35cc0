"""The pilot: a grader that learns from a few training queries' human grades, and a run that uses no other.

A run with `labels.seed_share` / `seed_queries` may see the human grades of its seed queries (the grader's
training data) and of its test queries (evaluation only), and no other: the test queries never reach the
grader, and the training frame's `grade` is NaN outside the two sets, so tuning and the cold route choose on
what the pilot paid for.
"""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench.bench_label_budget import grades_at_kappa, paired_ci
from features.crossencoder.trainer import _cap_queries
from labels.backends.base import LabelerError
from labels.config import LabelConfig
from labels.metrics import quadratic_kappa
from labels.run import label_pairs, pilot_queries
from ltr.data.dataset import write_table
from ltr.data.splits import held_out_queries
from ltr.pipeline import RunPaths, pilot_grades, run_test_queries
from ltr.rankers import split_frame
from ltr.run_config import RunConfig

QIDS = [f"q{i:03d}" for i in range(100)]


def test_the_seed_is_drawn_from_training_queries_only():
    test = set(QIDS[:25])
    seed, held = pilot_queries(QIDS, LabelConfig(seed_share=0.1), exclude=test)
    assert len(seed) == round(0.1 * 75) and not seed & test
    assert held == set(QIDS) - test - seed
    assert pilot_queries(QIDS, LabelConfig(seed_share=0.1), exclude=test)[0] == seed  # seeded
    assert len(pilot_queries(QIDS, LabelConfig(seed_queries=12), exclude=test)[0]) == 12


def test_without_a_pilot_a_fifth_is_held_out_for_calibration():
    seed, held = pilot_queries(QIDS, LabelConfig())
    assert len(held) == 20 and seed == set(QIDS) - held


def test_a_pilot_larger_than_the_training_queries_is_refused():
    with pytest.raises(LabelerError, match="90 of 75"):
        pilot_queries(QIDS, LabelConfig(seed_queries=90), exclude=set(QIDS[:25]))
    with pytest.raises(ValueError, match="not both"):
        LabelConfig(seed_share=0.1, seed_queries=10)


def test_the_labels_stage_and_the_frame_split_agree_on_the_test_queries():
    frame = pd.DataFrame({"query_id": np.repeat(QIDS, 3), "product_id": [f"p{i}" for i in range(300)]})
    held_frame = set(split_frame(frame, "query_id", [0.7, 0.3], 7)[1]["query_id"])
    assert held_out_queries(frame["query_id"].sample(frac=1, random_state=1), 0.3, 7) == held_frame


def test_the_frame_keeps_human_grades_of_seed_and_test_queries_only(tmp_path):
    cfg = RunConfig.model_validate({"labels": {"seed_queries": 5}, "train": {"test_fraction": 0.3}})
    ds = SimpleNamespace(candidates=pd.DataFrame({"query_id": QIDS, "product_id": QIDS}))
    paths = RunPaths(tmp_path)
    seed = sorted(set(QIDS) - run_test_queries(cfg, ds))[:5]
    (tmp_path / "labels" / "grader").mkdir(parents=True)
    (tmp_path / "labels" / "grader" / "seed_queries.json").write_text(json.dumps(seed))
    frame = pilot_grades(cfg, paths, pd.DataFrame({"query_id": QIDS, "grade": 2.0}), ds)
    kept = set(frame.loc[frame["grade"].notna(), "query_id"])
    assert kept == set(seed) | run_test_queries(cfg, ds) and len(kept) == 35
    untouched = pilot_grades(RunConfig(), paths, pd.DataFrame({"query_id": QIDS, "grade": 2.0}), ds)
    assert untouched["grade"].notna().all()  # no pilot: every judged grade stays


def _judged(root):
    """20 queries x 4 products: the first product of each query names it, the others do not."""
    words = ["drill", "hammer", "saw", "ladder", "paint", "brush", "hose", "faucet", "lamp", "fan",
             "rake", "shovel", "glue", "tape", "nail", "screw", "bolt", "wrench", "pliers", "level"]
    prods, judg = [], []
    for i, w in enumerate(words):
        for j in range(4):
            pid = f"P{i:02d}{j}"
            title = f"cordless {w} 20v kit" if j == 0 else f"{words[(i + j) % 20]} storage box {j}"
            prods.append({"product_id": pid, "title": title})
            judg.append({"query": f"{w} {i}", "product_id": pid, "grade": 3 if j == 0 else j % 2})
    write_table(pd.DataFrame(prods), root / "products.parquet", "products")
    write_table(pd.DataFrame(judg), root / "judgments.parquet", "judgments")
    from ltr.data.esci import load_esci
    load_esci(root, root / "ds")
    return root / "ds"


def test_the_grader_never_sees_an_excluded_query_yet_grades_it(tmp_path):
    ds_dir = _judged(tmp_path)
    qids = sorted(pd.read_parquet(ds_dir / "queries.parquet")["query_id"])
    exclude = qids[:5]
    cfg = LabelConfig(seed_queries=6, cache_path=str(tmp_path / "cache.sqlite"))
    s = label_pairs(ds_dir, tmp_path / "labels" / "labels.parquet", cfg, progress=False, exclude_queries=exclude)
    seed = set(json.loads((tmp_path / "labels" / "grader" / "seed_queries.json").read_text()))
    assert len(seed) == 6 and not seed & set(exclude)
    assert s["grader_fitted"]["seed_pairs"] == 24 and s["grader_fitted"]["excluded_queries"] == 5
    assert s["grader_fitted"]["heldout_queries"] == 9
    labels = pd.read_parquet(tmp_path / "labels" / "labels.parquet")
    assert set(exclude) <= set(labels["query_id"]) and len(labels) == 80


def test_the_cross_encoder_cap_samples_queries_and_keeps_named_validation_queries():
    pairs = pd.DataFrame({"query_id": np.repeat(QIDS, 2), "product_id": range(200), "score": 0.5})
    capped = _cap_queries(pairs, 10, 0, always=["q099"])
    assert capped["query_id"].nunique() == 11 and "q099" in set(capped["query_id"])
    assert (capped.groupby("query_id").size() == 2).all()  # whole queries
    assert _cap_queries(pairs, None, 0, None) is pairs


def test_noisy_grades_reach_the_asked_kappa():
    g = np.random.default_rng(0).choice([0, 1, 2, 3], size=2000, p=[0.1, 0.1, 0.35, 0.45])
    for target in (0.3, 0.5, 0.7):
        noisy, measured = grades_at_kappa(g, target, seed=1)
        assert abs(measured - target) < 0.05 and measured == pytest.approx(quadratic_kappa(g, noisy))
    assert grades_at_kappa(g, 1.0, seed=1)[1] == 1.0


def test_the_paired_ci_says_when_it_excludes_zero():
    idx = [f"q{i}" for i in range(400)]
    rng = np.random.default_rng(0)
    base = pd.Series(rng.random(400), index=idx)
    better = paired_ci(base + 0.05 + rng.normal(0, 0.05, 400), base)
    same = paired_ci(base + rng.normal(0, 0.05, 400), base)
    assert better["excludes_0"] and better["ci95"][0] > 0
    assert not same["excludes_0"] and same["ci95"][0] < 0 < same["ci95"][1]


def test_the_label_view_holds_only_the_human_labels_it_is_given(tmp_path):
    """Human labels win in the label view, so a pilot's run passes only its seed queries' judgments: the other
    queries' content label is then the labeler's."""
    from features.build import build_features
    from features.config import FeaturesConfig
    ds_dir = _judged(tmp_path)
    jud = pd.read_parquet(ds_dir / "judgments.parquet")
    seed = sorted(jud["query_id"].unique())[:3]
    from ltr.data.schemas import LABELS
    lab = pd.DataFrame({"query_id": jud["query_id"], "product_id": jud["product_id"], "score": 0.5,
                        "p0": 0.25, "p1": 0.25, "p2": 0.25, "p3": 0.25, "backend": "grader", "model": "m",
                        "prompt_version": "v", "cost": 0.0,
                        "created_at": pd.Timestamp("2024-01-01", tz="UTC")})
    lab = LABELS.validate(lab, where="test")
    cfg = FeaturesConfig(families=["labels"])
    build_features(ds_dir, tmp_path / "f", cfg, labels=lab, judgments=jud[jud["query_id"].isin(seed)],
                   progress=False)
    view = pd.read_parquet(tmp_path / "f" / "relevance_labels.parquet")
    human = view[view["labeler"] == "human"]
    assert set(human["query_id"]) == set(seed) and len(view) == len(jud)
    assert (view.loc[~view["query_id"].isin(seed), "label_score"] == 0.5).all()
