"""ltr.unbiased and experiment group (f): XGBoost's unbiased LambdaMART on raw clicks, checked against the
built-in world's true examination curve; bad logs and parameters give one clear error naming the field."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from bench.bench_unbiased import world_frame
from ltr.counterfactual.logs import CounterfactualError
from ltr.experiments import BASELINE, build_arms, run_experiments
from ltr.rankers import split_frame
from ltr.sim.world import WorldConfig, generate_world
from ltr.train import feature_columns
from ltr.train_config import ExperimentConfig, TunedParams
from ltr.unbiased import (
    ClickLog,
    UnbiasedError,
    UnbiasedLambdaMART,
    click_rows,
    complete_searches,
    fit_on_clicks,
    harvested_curve,
    max_relative_error,
)

SMALL = dict(n_products=800, n_queries=60, n_candidates=30, days=21)   # configs/smoke.yaml's world
FAST = {"n_estimators": 30, "n_jobs": 2}
TINY = {"model": {"n_estimators": 20, "early_stopping_rounds": 5, "max_depth": 4, "n_jobs": 2}}
UNBIASED, NAIVE = "raw clicks, unbiased LambdaMART", "raw clicks, naive LambdaMART"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12,000 searches of 60 queries (~1 s to generate): the training frame and its click log."""
    d = tmp_path_factory.mktemp("unbiased") / "world"
    generate_world(d, seed=11, cfg=WorldConfig(**SMALL, sessions=12000), progress=False)
    return world_frame(d)


@pytest.fixture(scope="module")
def fitted(world):
    frame, clicks = world
    feats = feature_columns(frame)
    rows, info = click_rows(clicks.impressions, frame, feats)   # every search, both windows: the most clicks
    return rows, info, feats, fit_on_clicks(UnbiasedLambdaMART(**FAST), rows, feats)


def test_learnt_propensities_fall_with_position_and_sit_near_the_truth(world, fitted):
    _, clicks = world
    rows, info, feats, model = fitted
    truth = clicks.true_examination
    assert info["searches_dropped"] == 0 and info["searches"] > 11000
    t = model.propensities_
    assert t.shape == (10,) and t[0] == 1.0 and (np.diff(t) < 0).all(), np.round(t, 3)
    # measured 2026-12-07 with these settings on worlds of seeds 11 (this one), 12, 13 (SMALL, 12,000 searches):
    # XGBoost's t+ (bias_norm 1) overstated positions 2-10, max relative error 0.31 / 0.58 / 0.27, against
    # 0.02 / 0.05 / 0.02 for intervention harvesting on the same rows; a flat curve (what the naive fit assumes)
    # is 5.3 off. 0.45 holds this world with margin, not every world: seed 12's 0.58 would fail it
    err = max_relative_error(t, truth)
    assert err <= 0.45, f"XGBoost's learnt propensities: {np.round(t, 3)}, truth {np.round(truth, 3)}"
    ih = harvested_curve(rows, 10, n_boot=0, seed=0)["examination"]
    assert max_relative_error(ih, truth) <= 0.10 < err      # harvesting stays the curve to read
    naive = fit_on_clicks(UnbiasedLambdaMART(**FAST, lambdarank_unbiased=False), rows, feats)
    assert naive.propensities_ is None and max_relative_error(np.ones(10), truth) > 4 * err


def test_the_ranker_keeps_the_sklearn_contract(fitted):
    rows, _, feats, model = fitted
    p = model.get_params()
    assert p["lambdarank_unbiased"] is True and p["lambdarank_bias_norm"] == 1.0 and p["max_position"] == 10
    assert clone(model).get_params() == p
    cfg = json.loads(model.model_.get_booster().save_config())["learner"]["objective"]["lambdarank_param"]
    assert cfg["lambdarank_unbiased"] == "1" and cfg["lambdarank_num_pair_per_sample"] == "10"
    scores = model.predict(rows.iloc[:50])
    assert scores.shape == (50,) and np.isfinite(scores).all() and model.feature_names_ == feats


def test_arm_runs_in_the_experiments_on_train_queries_only(world):
    frame, clicks = world
    cfg = ExperimentConfig.model_validate({"train": TINY, "arms": ["a", "f"], "click_n_boot": 10})
    md, js = run_experiments(frame, cfg, clicks=clicks)
    json.dumps(js, allow_nan=False)
    by = {a["name"]: a for a in js["arms"]}
    assert {UNBIASED, NAIVE, BASELINE} <= set(by) and not js["skipped"]
    assert [a["name"] for a in js["arms"]].count(BASELINE) == 1      # (a) already holds the baseline
    for name in (UNBIASED, NAIVE):
        assert next(x for x in md.splitlines() if x.startswith(f"| {name} | f |"))
        assert by[name]["paired_test"]["ndcg@10"]["n_queries"] > 30 and by[name]["mean"]["ndcg@10"] > 0.2
    for seed in cfg.seeds:                                           # exactly this seed's train queries' clicks
        train, _ = split_frame(frame, "query_id", [0.7, 0.3], seed)
        imp = clicks.rows(train["query_id"].unique(), "labels")
        assert by[UNBIASED]["click_log"][str(seed)]["impressions"] == len(imp) < len(clicks.impressions) / 3
    props = js["propensities"][UNBIASED]
    assert props["positions"] == list(range(1, 11)) and props["truth"][0] == 1.0
    for block in ("xgboost_lambdarank_unbiased", "intervention_harvesting"):
        assert set(props[block]["per_seed"]) == {"0", "1", "2"} and props[block]["max_rel_error_vs_truth"] > 0
    assert NAIVE not in js["propensities"]
    assert "intervention harvesting" in md and "vs the true examination" in md


def test_group_f_without_a_log_is_skipped_with_the_reason(world):
    frame, _ = world
    cfg = ExperimentConfig(arms=["f"])
    arms, skipped = build_arms(cfg, TunedParams(alpha=8, beta=0.5, blend_weight=0.6), set(frame.columns))
    assert arms == [] and skipped[0]["group"] == "f" and "no impression log" in skipped[0]["reason"]
    arms, _ = build_arms(cfg, TunedParams(alpha=8, beta=0.5, blend_weight=0.6), set(frame.columns), has_clicks=True)
    assert [a.name for a in arms] == [BASELINE, NAIVE, UNBIASED] and arms[0].clicks is None


def test_complete_searches_marks_gaps_and_repeats():
    search = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pos = np.array([1, 2, 3, 1, 3, 1, 1, 2])
    assert complete_searches(search, pos).tolist() == [True] * 3 + [False] * 5


@pytest.mark.parametrize("change, needle", [
    (lambda r: r.assign(position=r["position"] - 1), "column 'position' must hold integers >= 1"),
    (lambda r: r.assign(position=r["position"].where(r.index > 0)), "column 'position' must hold integers >= 1"),
    (lambda r: r.assign(clicked=0.0), "column 'clicked' has no click"),
    (lambda r: r.assign(clicked=0.5), "column 'clicked' must be 0/1"),
    (lambda r: r[r["position"] != 3], "column 'position': "),
])
def test_bad_rows_name_the_field_and_the_fix(fitted, change, needle):
    rows, _, feats, _ = fitted
    bad = change(rows.iloc[:2000].copy())
    with pytest.raises(UnbiasedError, match="Fix:") as e:
        fit_on_clicks(UnbiasedLambdaMART(**FAST), bad, feats)
    assert needle in str(e.value)


@pytest.mark.parametrize("params, needle", [
    ({"max_position": 1}, "max_position=1"), ({"lambdarank_bias_norm": -1.0}, "lambdarank_bias_norm=-1.0"),
])
def test_bad_parameters_name_the_field(fitted, params, needle):
    rows, _, feats, _ = fitted
    with pytest.raises(UnbiasedError, match=needle):
        fit_on_clicks(UnbiasedLambdaMART(**FAST, **params), rows.iloc[:2000], feats)


def test_bad_logs_name_the_column(world):
    _, clicks = world
    imp = clicks.impressions
    with pytest.raises(CounterfactualError, match="missing column 'position'.*Fix:"):
        ClickLog(imp.drop(columns=["position"]))
    with pytest.raises(CounterfactualError, match="column 'clicked' has no click"):
        ClickLog(imp.assign(clicked=False))
    with pytest.raises(UnbiasedError, match="missing column 'ts'"):
        ClickLog(imp.drop(columns=["ts"]), cutoff=pd.Timestamp("2026-09-15", tz="UTC"))
    with pytest.raises(UnbiasedError, match="click window 'later' unknown"):
        clicks.rows(["q"], "later")
