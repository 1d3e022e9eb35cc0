"""Counterfactual evaluation (ltr.counterfactual) against known truth: the built-in world's examination curve and
its shoppers, and synthetic logs whose click model is set here; bad logs and rankings give one clear error."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ltr.counterfactual.estimators import OfflineEvaluator
from ltr.counterfactual.logs import CounterfactualError, ImpressionLog
from ltr.counterfactual.offline import candidate_pairs, logged_dataset, pair_features
from ltr.counterfactual.propensity import InterventionHarvesting, PositionBasedEM, propensity_curve
from ltr.counterfactual.validation import (
    WorldLoggingRanker,
    expected,
    fit_content_ranker,
    replay,
    traffic_weighted_difference,
)
from ltr.sim.click_model import ClickModel, examination
from ltr.sim.world import WorldConfig, generate_world

SMALL = dict(n_products=800, n_queries=60, n_candidates=30, days=21)   # configs/smoke.yaml's world
TRUE_THETA = examination(np.arange(1, 11), ClickModel().eta)


@pytest.fixture(scope="module")
def busy_world(tmp_path_factory):
    """A small world with 12,000 searches: enough for the curve at positions 1-10 to be checked to 10%."""
    d = tmp_path_factory.mktemp("cf") / "world"
    generate_world(d, seed=11, cfg=WorldConfig(**SMALL, sessions=12000), progress=False)
    return d


def _log(world) -> ImpressionLog:
    return logged_dataset(world)[1]


# --- propensities --------------------------------------------------------------------------------

def test_propensity_curve_matches_the_worlds_examination(busy_world):
    model, curve = propensity_curve(_log(busy_world), n_boot=60, seed=1)
    assert isinstance(model, InterventionHarvesting) and curve.examination[0] == 1.0
    err = curve.examination / TRUE_THETA - 1.0
    assert np.abs(err).max() <= 0.10, f"relative error by position: {np.round(err, 3)}"
    assert (curve.ci_low <= curve.examination + 1e-12).all() and (curve.examination <= curve.ci_high + 1e-12).all()
    held = (curve.ci_low[1:] <= TRUE_THETA[1:]) & (TRUE_THETA[1:] <= curve.ci_high[1:])
    assert held.sum() >= 7, f"the 95% intervals hold the truth at {held.sum()} of positions 2-10"
    assert (np.diff(curve.examination) < 0.02).all()      # examination falls with position


def test_em_and_harvesting_agree_when_pairs_have_many_impressions(tmp_path):
    d = tmp_path / "w"
    generate_world(d, seed=5, cfg=WorldConfig(n_products=400, n_queries=15, n_candidates=20, sessions=9000,
                                              days=7), progress=False)
    log = _log(d)
    em = PositionBasedEM(max_position=10).fit(log)
    ih = InterventionHarvesting(max_position=10).fit(log)
    assert em.converged_
    assert np.abs(em.examination_ / TRUE_THETA - 1).max() <= 0.12
    assert np.abs(em.examination_ / ih.examination_ - 1).max() <= 0.08


def test_a_log_without_position_variation_says_so(busy_world):
    imp = logged_dataset(busy_world)[0].impressions
    first = imp.groupby(["query_id", "product_id"])["position"].transform("first")
    with pytest.raises(CounterfactualError, match=r"column 'position' never varies for a pair.*Fix:"):
        InterventionHarvesting().fit(ImpressionLog.from_frame(imp.assign(position=first)))


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.drop(columns=["clicked"]), "missing column 'clicked'"),
    (lambda d: d.drop(columns=["request_id"]), "missing column 'request_id'"),
    (lambda d: d.assign(clicked=False), "column 'clicked' has no click"),
    (lambda d: d.assign(position=d["position"] - 1), "column 'position' must hold integers >= 1"),
    (lambda d: d.iloc[:0], "has no rows"),
])
def test_bad_logs_name_the_field_and_the_fix(busy_world, change, needle):
    imp = logged_dataset(busy_world)[0].impressions
    with pytest.raises(CounterfactualError, match="Fix:") as e:
        ImpressionLog.from_frame(change(imp))
    assert needle in str(e.value)


# --- estimators on a synthetic log with a known answer ---------------------------------------------

def _synthetic(seed: int, shown_share: float = 1.0, searches: int = 6000, n_q: int = 40, n_c: int = 15):
    """Searches of `n_q` queries under a logging ranker that shuffles the first `shown_share` of each
    query's candidates at random (the rest are never shown), clicked by a PBM with eta 0.8."""
    rng = np.random.default_rng(seed)
    cand = pd.DataFrame({"query_id": np.repeat([f"q{i:02d}" for i in range(n_q)], n_c),
                         "product_id": [f"p{j:02d}" for _ in range(n_q) for j in range(n_c)],
                         "attract": rng.beta(2, 5, n_q * n_c), "p_cart": rng.beta(2, 4, n_q * n_c)})
    cand["p_purchase"] = 0.5
    cand["feature"] = cand["attract"] + rng.normal(0, 0.02, len(cand))      # a good direct-model feature
    loggable = int(round(shown_share * n_c))
    q = rng.integers(n_q, size=searches)
    order = np.argsort(rng.random((searches, loggable)), axis=1)[:, :10]        # a random order per search
    rows = cand.iloc[(q[:, None] * n_c + order).ravel()].reset_index(drop=True)
    rows["request_id"] = np.repeat([f"r{s:06d}" for s in range(searches)], order.shape[1])
    rows["position"] = np.tile(np.arange(1, order.shape[1] + 1), searches)
    frame = ClickModel(eta=0.8).simulate(rows, rng)
    new = cand.assign(score=cand["product_id"].str[1:].astype(int).astype(float))   # the last candidates first
    share = frame.groupby("query_id")["request_id"].nunique()
    share = share / share.sum()
    top = new.sort_values(["query_id", "score"], ascending=[True, False]).groupby("query_id").head(10)
    top = top.assign(theta=np.tile(examination(np.arange(1, 11), 0.8), n_q))
    truth = {"clicked": float((top["theta"] * top["attract"]).groupby(top["query_id"]).sum().mul(share).sum()),
             "added_to_cart": float((top["theta"] * top["attract"] * top["p_cart"]).groupby(top["query_id"]).sum()
                                    .mul(share).sum())}
    return frame, new[["query_id", "product_id", "score"]], cand[["query_id", "product_id", "feature"]], truth


def test_estimators_recover_a_known_ranking_value_under_full_support():
    frame, ranking, feats, truth = _synthetic(seed=0)
    res = OfflineEvaluator(n_boot=100).fit(ImpressionLog.from_frame(frame), feats).evaluate(ranking)
    assert res["support"] == 1.0
    for o in ("clicked", "added_to_cart"):
        for e in ("ips", "snips", "dr"):
            lo, hi = res["outcomes"][o][e]["ci95"]
            assert lo <= truth[o] <= hi, (o, e, truth[o], res["outcomes"][o][e])
        assert abs(res["outcomes"][o]["dr"]["value"] / truth[o] - 1) < 0.05


def test_doubly_robust_fills_what_the_log_never_showed():
    """A third of each query's candidates never shown: IPS counts them 0 and falls short; the direct model
    (here from a feature close to the true attractiveness) lets DR and DM recover the value."""
    frame, ranking, feats, truth = _synthetic(seed=1, shown_share=2 / 3)
    res = OfflineEvaluator(n_boot=100).fit(ImpressionLog.from_frame(frame), feats).evaluate(ranking)
    c = res["outcomes"]["clicked"]
    assert res["support"] < 0.9
    assert c["ips"]["ci95"][1] < truth["clicked"], "IPS cannot see results the log never showed"
    assert c["dr"]["ci95"][0] <= truth["clicked"] <= c["dr"]["ci95"][1]
    assert abs(c["dr"]["value"] / truth["clicked"] - 1) < abs(c["ips"]["value"] / truth["clicked"] - 1)


@pytest.mark.parametrize("change, needle", [
    (lambda r: r.drop(columns=["score"]), "missing column 'score'"),
    (lambda r: r[r["query_id"] != "q00"], "no row for 1 logged query_id"),
    (lambda r: r.assign(score=np.nan), "column 'score' has"),
])
def test_bad_rankings_name_the_field_and_the_fix(change, needle):
    frame, ranking, feats, _ = _synthetic(seed=2, searches=800, n_q=5)
    ev = OfflineEvaluator(n_boot=5).fit(ImpressionLog.from_frame(frame))
    with pytest.raises(CounterfactualError, match="Fix:") as e:
        ev.evaluate(change(ranking))
    assert needle in str(e.value)


def test_parameters_are_checked_once():
    for kw, needle in (({"k": 0}, "k must"), ({"clip": 0.5}, "clip must"), ({"unit": "day"}, "unit=")):
        with pytest.raises(CounterfactualError, match=needle):
            OfflineEvaluator(**kw)


# --- coverage on the built-in world ---------------------------------------------------------------

def _world_check(tmp_path, seed: int, replay_sessions: int | None, n_boot: int = 100) -> tuple[dict, dict]:
    """(estimates, true difference) of a content model vs the world's logging ranker, clicks and carts per search."""
    d = tmp_path / f"w{seed}"
    generate_world(d, seed=seed, cfg=WorldConfig(**SMALL, sessions=4000), progress=False)
    ds, log = logged_dataset(d)
    feats = pair_features(ds, candidate_pairs(ds, log))
    champion = fit_content_ranker(ds, feats)
    logging = WorldLoggingRanker(ds)
    scores = pd.concat([pd.DataFrame({"query_id": q, "product_id": s.index, "score": s.to_numpy()})
                        for q, s in champion.scores.items()], ignore_index=True)
    res = OfflineEvaluator(n_boot=n_boot, seed=seed).fit(log, feats).evaluate(scores)
    searches = pd.Series(log.searches_per_query(), index=log.queries)
    if replay_sessions is None:
        new, old = expected(d, champion), expected(d, logging, draws=100, seed=seed)
    else:
        new, old = replay(d, champion, replay_sessions, seed=seed), replay(d, logging, replay_sessions, seed=seed)
    return res, traffic_weighted_difference(new, old, searches)


def _covered(runs, outcome: str, estimator: str) -> int:
    return sum(r["outcomes"][outcome][estimator]["diff_ci95"][0] <= t[outcome]
               <= r["outcomes"][outcome][estimator]["diff_ci95"][1] for r, t in runs)


def test_coverage_of_the_true_difference_fast(tmp_path):
    """Three worlds, the exact expected difference as truth: the doubly-robust and IPS intervals hold it."""
    runs = [_world_check(tmp_path, seed, None) for seed in (0, 1, 2)]
    for o in ("clicked", "added_to_cart"):
        for e in ("ips", "dr"):
            assert _covered(runs, o, e) >= 2, (o, e, [(r["outcomes"][o][e]["diff_ci95"], t[o]) for r, t in runs])


@pytest.mark.slow
def test_coverage_of_the_replayed_difference_over_ten_seeds(tmp_path):
    """The acceptance check: both rankers replayed through the world's shoppers; the 95% interval of the
    estimated difference covers the replayed one in at least 8 of 10 seeds."""
    runs = [_world_check(tmp_path, seed, 6000, n_boot=200) for seed in range(10)]
    report = {o: {e: _covered(runs, o, e) for e in ("ips", "snips", "dm", "dr")} for o in ("clicked", "added_to_cart")}
    print(json.dumps(report))
    for o in ("clicked", "added_to_cart"):
        for e in ("ips", "dr"):
            assert report[o][e] >= 8, report


# --- the CLI --------------------------------------------------------------------------------------

def test_cli_prints_the_estimates_for_a_registered_model(busy_world, tmp_path):
    from typer.testing import CliRunner

    from features.lexical import LEXICAL_FEATURES
    from features.ondemand import OnDemandFeatures
    from features.product import PRODUCT_FEATURES
    from ltr import tracking as T
    from ltr.cli import app
    from ltr.data.dataset import Dataset
    from ltr.serving.demo import train_and_register

    ds = Dataset.load(busy_world)
    j = ds.judgments
    cols = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES)
    X = OnDemandFeatures(ds.products).compute(j[["query", "product_id"]], cols)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    with T.using_tracking(store, "cf-test", (tmp_path / "artifacts").as_uri()):
        uri = train_and_register(X[cols], j["grade"], j["query_id"], "ltr-cf-test", n_estimators=30)
        res = CliRunner().invoke(app, ["evaluate", "--counterfactual", "--logs", str(busy_world), "--model", uri,
                                       "--tracking-uri", store, "--out", str(tmp_path / "cf.json")])
    assert res.exit_code == 0, res.output
    assert "logging ranker" in res.output and "model    dr" in res.output
    rep = json.loads((tmp_path / "cf.json").read_text())
    clicks = rep["outcomes"]["clicked"]
    assert rep["searches"] == ds.impressions["request_id"].nunique() and rep["k"] == 10
    assert clicks["logging"]["ci95"][0] <= clicks["logging"]["value"] <= clicks["logging"]["ci95"][1]
    for e in ("ips", "snips", "dm", "dr"):
        assert clicks[e]["diff_ci95"][0] <= clicks[e]["diff"] <= clicks[e]["diff_ci95"][1]
