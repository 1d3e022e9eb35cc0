"""ltr.experiments: paired significance tests of every arm against the engagement-only baseline."""
import json

import numpy as np
import pandas as pd
import pytest
from fixtures.synthetic_frame import synthetic_training_frame

from ltr.experiments import BASELINE, paired_tests, run_experiments
from ltr.train_config import ExperimentConfig

TINY = {"model": {"n_estimators": 10, "early_stopping_rounds": 5, "max_depth": 3, "n_jobs": 1}}


def _per_query(values: np.ndarray, eng: np.ndarray) -> pd.DataFrame:
    idx = pd.Index([f"q{i:03d}" for i in range(len(values))], name="query_id")
    return pd.DataFrame({"ndcg@10": values, "cart_recall@10": eng}, index=idx)


def test_paired_tests_pool_seeds_and_compare_with_the_baseline():
    rng = np.random.default_rng(0)
    base = {s: _per_query(rng.uniform(0.3, 0.7, 20), rng.uniform(0, 1, 20)) for s in (0, 1, 2)}
    better = {s: f.assign(**{"ndcg@10": f["ndcg@10"] + rng.uniform(0.05, 0.2, 20)}) for s, f in base.items()}
    better[1].iloc[:4, 1] = np.nan                      # queries without carts: no pair for the engagement test
    per_query = {BASELINE: base, "better": better, "same": {s: f.copy() for s, f in base.items()}}
    t = paired_tests(per_query, ("ndcg@10", "cart_recall@10"))
    assert set(t) == {"better", "same"}
    assert t["better"]["ndcg@10"]["n_queries"] == 60          # (seed, query) pairs: 3 seeds x 20 queries
    assert t["better"]["ndcg@10"]["p_ttest"] < 1e-6 and t["better"]["ndcg@10"]["p_wilcoxon"] < 1e-6
    assert t["better"]["cart_recall@10"]["n_queries"] == 56
    assert t["better"]["cart_recall@10"]["p_ttest"] == 1.0  # engagement unchanged on every pair
    assert t["same"]["ndcg@10"] == {"n_queries": 60, "mean_diff": 0.0, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    assert paired_tests({"better": better}, ("ndcg@10",)) == {}   # no baseline arm, no tests


def test_same_query_ids_in_different_seeds_stay_apart():
    a = {0: _per_query(np.array([0.1, 0.2]), np.zeros(2)), 1: _per_query(np.array([0.9, 0.8]), np.zeros(2))}
    b = {0: _per_query(np.array([0.2, 0.4]), np.zeros(2)), 1: _per_query(np.array([1.0, 0.9]), np.zeros(2))}
    t = paired_tests({BASELINE: a, "b": b}, ("ndcg@10",))["b"]["ndcg@10"]
    assert t["n_queries"] == 4 and t["mean_diff"] == pytest.approx(0.125)


def test_run_experiments_reports_p_values_in_table_and_json():
    cfg = ExperimentConfig.model_validate({"train": TINY, "arms": ["a", "d"]})
    frames = {s: synthetic_training_frame(60, 10, seed=s) for s in (0, 1, 2)}
    md, js = run_experiments(frames, cfg)
    json.dumps(js, allow_nan=False)                    # strict JSON: NaN p-values become null
    by = {a["name"]: a for a in js["arms"]}
    assert by[BASELINE]["paired_test"] is None
    assert js["significance"]["baseline"] == BASELINE and js["significance"]["pooled_over_seeds"]
    grades = by["label source: true grades"]["paired_test"]["ndcg@10"]
    assert grades["n_queries"] > 30 and grades["mean_diff"] > 0 and grades["p_ttest"] < 0.01
    same = by["label source: engagement"]["paired_test"]     # the same model as the baseline
    assert same["ndcg@10"]["p_ttest"] == 1.0 and same["ndcg@10"]["p_wilcoxon"] == 1.0
    assert set(same) == {"ndcg@10", "cart_recall@10", "ndcg@10/cold"}
    claim = js["claim"]
    assert claim["content_p_ttest"] == by["LLM labels, tuned sigmoid"]["paired_test"]["ndcg@10"]["p_ttest"]
    header, rule = md.splitlines()[:2]
    assert "p ΔNDCG t / W (n)" in header and "NDCG@10 cold" in header and rule.count("---") == header.count("|") - 1
    assert claim["content_rel_gain_cold"] is not None
    row = next(x for x in md.splitlines() if x.startswith("| label source: true grades"))
    assert f"(n={grades['n_queries']})" in row
    assert "| baseline | baseline |" in next(x for x in md.splitlines() if x.startswith(f"| {BASELINE} "))
