"""The cold route (ltr/cold_route.py): chosen on the training queries only, applied only to queries with no
engagement at all, carried by the registered model, and used by `ltr evaluate` and the service."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from ltr.cold_route import ColdRoute, cold_queries, routed_scores, zscore_by_query
from ltr.data import metrics as M
from ltr.train import fit_ranker
from ltr.train_config import TrainConfig

MODEL = {"n_estimators": 30, "early_stopping_rounds": None, "max_depth": 3, "n_jobs": 1}
GRADE_LABELS = {"content_source": "grade", "blend_weight": 1.0}  # no engagement counts needed


def two_feature_shop(n_queries: int = 60, per_query: int = 12, seed: int = 0) -> pd.DataFrame:
    """Queries q000-q039 where `bienc_cos` knows the grade and `lex_bm25_title` is noise, q040-q059 the
    other way round: a route chosen on the second group would be the opposite of one chosen on the first."""
    rng = np.random.default_rng(seed)
    n = n_queries * per_query
    qid = np.repeat([f"q{i:03d}" for i in range(n_queries)], per_query)
    grade = rng.choice(4, size=n, p=[0.4, 0.2, 0.2, 0.2]).astype(float)
    first = np.char.less(qid.astype(str), "q040")
    signal, noise = grade / 3 + rng.normal(0, 0.2, n), rng.normal(0, 1, n)
    return pd.DataFrame({"query_id": qid, "product_id": [f"p{i:05d}" for i in range(n)],
                         "bienc_cos": np.where(first, signal, noise), "lex_bm25_title": np.where(first, noise, signal),
                         "eng_qp_ctr_28d": grade / 3 + rng.normal(0, 0.05, n), "grade": grade})


def _ndcg(frame: pd.DataFrame, scores) -> float:
    return float(M.per_query_metrics(frame, np.asarray(scores), k=10, metrics=())["ndcg@10"].mean())


def test_the_route_is_chosen_on_the_training_queries_only():
    f = two_feature_shop()
    train, test = f[f["query_id"] < "q040"].reset_index(drop=True), f[f["query_id"] >= "q040"].reset_index(drop=True)
    cfg = TrainConfig(model=MODEL, target=GRADE_LABELS)
    feats = ["bienc_cos", "lex_bm25_title", "eng_qp_ctr_28d"]
    route = ColdRoute(candidates=("feature",)).fit(train, cfg, feats)
    assert route.scorer_.name == "feature:bienc_cos"
    assert route.validation_["n_queries"] == 40 and route.validation_["choice"] == "feature:bienc_cos"
    # on the held-out queries the other feature is far better: a choice that had seen them would differ
    assert _ndcg(test, test["lex_bm25_title"]) > _ndcg(test, test["bienc_cos"]) + 0.2
    assert ColdRoute(candidates=("feature",)).fit(test, cfg, feats).scorer_.name == "feature:lex_bm25_title"


def test_every_candidate_is_scored_on_queries_its_models_never_saw():
    f = two_feature_shop(40)
    cfg = TrainConfig(model=MODEL, target=GRADE_LABELS)
    route = ColdRoute(n_folds=4).fit(f, cfg, ["bienc_cos", "lex_bm25_title", "eng_qp_ctr_28d"])
    v = route.validation_
    assert v["n_folds"] == 4 and v["n_queries"] == 40
    assert set(v["scores"]) == set(v["vs_status_quo"]) == {"champion", "content_only", "feature", "blend"}
    assert {"feature:bienc_cos", "feature:lex_bm25_title", "blend:bienc_cos@0.25", "blend:lex_bm25_title@4"} <= set(
        v["candidates"])
    assert v["status_quo"] == "champion"    # the trees, by default
    chosen = route.scorer_.kind
    margin = v["vs_status_quo"][chosen]
    assert chosen == "champion" or margin["gap"] > margin["se"]
    assert "gate" not in v                                  # off with the trees as the status quo


def test_a_zero_shot_status_quo_keeps_cold_queries_unless_beaten_on_evidence():
    """Four ninths of the queries' bi-encoder knows the grade, the rest's title BM25 does; the trees learn both,
    so they beat the bi-encoder alone on evidence, as a kind and through the gate, and keep cold queries (no
    route). Where the bi-encoder is good everywhere and nothing else is, it stays. With the trees as the status
    quo (the default) they are compared with nothing."""
    f = two_feature_shop(90)
    cfg = TrainConfig(model=MODEL, target=GRADE_LABELS, cold_query_share=0.5)  # the trees learn a content path
    feats = ["bienc_cos", "lex_bm25_title", "eng_qp_ctr_28d"]
    route = ColdRoute(n_folds=4, candidates=("champion", "feature"), status_quo="zero_shot", gate=True).fit(
        f, cfg, feats)
    v = route.validation_
    assert v["status_quo"] == "feature:bienc_cos" and v["vs_status_quo"]["champion"]["gap"] > v["vs_status_quo"][
        "champion"]["se"]
    assert v["gate"]["passed"] and v["gate"]["chosen_before_gate"] == "champion"
    assert route.scorer_.name == "champion" and not route.active
    rng = np.random.default_rng(1)
    good = f.assign(bienc_cos=f["grade"] / 3 + rng.normal(0, 0.2, len(f)), lex_bm25_title=rng.normal(0, 1, len(f)))
    route = ColdRoute(n_folds=4, candidates=("champion", "feature"), status_quo="zero_shot").fit(good, cfg, feats)
    assert route.scorer_.name == "feature:bienc_cos" and route.validation_["best_mean_kind"] is None
    trees_first = ColdRoute(n_folds=4).fit(good, cfg, feats, scored=route.scored_)
    assert trees_first.validation_["status_quo"] == "champion"
    assert trees_first.validation_["vs_status_quo"]["champion"] == {"gap": 0.0, "se": 0.0}
    with pytest.raises(ValueError, match="status_quo"):
        ColdRoute(status_quo="bm25")


def test_a_setting_that_was_lucky_on_one_fold_is_not_rewarded():
    """Nested selection: each fold is scored by the setting that won the other folds."""
    from ltr.cold_route import _nested, _paired_gap

    per = pd.DataFrame({"a": [1.0, 1.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0, 1.0]}, index=["q1", "q2", "q3", "q4"])
    fold = pd.Series([0, 0, 1, 1], index=per.index)
    assert per.max(axis=1).mean() == 1.0 and per.mean().max() == 0.5 and _nested(per, fold).mean() == 0.0
    trees = pd.Series([0.5, 0.5, 0.5, 0.5], index=per.index)
    noise = _paired_gap(pd.Series([0.6, 0.4, 0.7, 0.45], index=per.index), trees)
    evidence = _paired_gap(pd.Series([0.6, 0.62, 0.58, 0.61], index=per.index), trees)
    assert noise["gap"] <= noise["se"] and evidence["gap"] > evidence["se"]


def test_the_gate_asks_the_whole_choice_to_beat_the_status_quo_on_queries_it_did_not_see():
    """A blend far ahead on three folds and useless on the fourth wins as a kind (its mean beats the trees by
    more than one standard error, and by a hair the steady content model), but chosen on any three folds it
    fails the fourth it did not see: the gate keeps the trees. A steady winner passes the gate."""
    from ltr.cold_route import Scorer

    idx = [f"q{i:02d}" for i in range(20)]
    fold = pd.Series(np.repeat([0, 1, 2, 3], 5), index=idx)
    trees, content, blend = Scorer("champion"), Scorer("content_only"), Scorer("blend", "bienc_cos", 1.0)
    scored = pd.DataFrame({trees: 0.5, content: 0.7, blend: np.where(fold == 3, 0.0, 0.95)}, index=idx)
    route = ColdRoute()
    chosen, choice = route._choose(scored, fold)
    assert chosen == blend and choice["vs_status_quo"]["blend"]["gap"] > choice["vs_status_quo"]["blend"]["se"]
    kept, gate = route._gated(chosen, scored, fold)
    assert kept == trees and gate["passed"] is False and gate["chosen_before_gate"] == blend.name
    assert gate["procedure_vs_status_quo"]["gap"] <= gate["procedure_vs_status_quo"]["se"]
    steady = scored.copy()
    steady[blend] = 0.72 + 0.01 * np.tile([1, -1], 10)
    assert route._gated(route._choose(steady, fold)[0], steady, fold)[0] == blend
    two_folds = fold.clip(upper=1)                         # too few folds to score the procedure out of fold
    assert route._gated(blend, steady, two_folds)[0] == trees
    assert ColdRoute().get_params()["gate"] is False and ColdRoute(gate=True).get_params()["gate"] is True


def test_the_simplest_route_within_one_standard_error_of_the_best_is_taken():
    """A blend a little ahead of one feature alone, within the noise, loses to the feature; far ahead, wins."""
    from ltr.cold_route import _choose_kind

    rng = np.random.default_rng(0)
    idx = [f"q{i}" for i in range(40)]
    trees = pd.Series(0.5, index=idx)
    feature = pd.Series(0.7 + rng.normal(0, 0.1, 40), index=idx)
    swing = np.tile([1.0, -1.0], 20)
    near = feature + 0.01 + 0.1 * swing  # ahead by 0.01 on average, SE of the gap 0.016
    nested = {"champion": trees, "feature": feature, "content_only": trees - 0.1, "blend": near}
    kind, best, gaps = _choose_kind(nested, ["feature", "blend"], "one_se")
    assert best == "blend" and kind == "feature" and 0 < gaps["feature"]["gap"] <= gaps["feature"]["se"]
    far = feature + 0.1 + 0.01 * swing  # ahead by 0.1, SE 0.0016
    assert _choose_kind(nested | {"blend": far}, ["feature", "blend"], "one_se")[:2] == ("blend", "blend")
    assert _choose_kind(nested, ["feature", "blend"], "best_mean")[:2] == ("blend", "blend")
    assert _choose_kind(nested, [])[0] is None  # nothing beat the status quo: it keeps cold queries


def test_only_fully_cold_queries_are_routed():
    f = two_feature_shop(6, 5)
    f.loc[f["query_id"] == "q000", "eng_qp_ctr_28d"] = np.nan                      # cold
    f.loc[(f["query_id"] == "q001") & (f.index % 2 == 0), "eng_qp_ctr_28d"] = np.nan  # partly logged: warm
    feats = ["bienc_cos", "lex_bm25_title", "eng_qp_ctr_28d"]
    assert cold_queries(f, feats, f["query_id"]).tolist() == (f["query_id"] == "q000").tolist()
    cfg = TrainConfig(model=MODEL, target=GRADE_LABELS)
    trees = fit_ranker(f.fillna({"eng_qp_ctr_28d": 0.0}), cfg, feats)
    route = ColdRoute.from_record({"kind": "feature", "feature": "bienc_cos", "features": feats})
    scores, routed = routed_scores(trees, route, f, f["query_id"].to_numpy())
    cold = f["query_id"] == "q000"
    assert routed.tolist() == cold.tolist()
    assert np.allclose(scores[~cold], trees.predict(f[~cold], missing="nan"))
    assert np.allclose(scores[cold], zscore_by_query(f.loc[cold, "bienc_cos"], f.loc[cold, "query_id"]))
    champion = ColdRoute.from_record({"kind": "champion", "features": feats})
    assert np.allclose(routed_scores(trees, champion, f, f["query_id"])[0], trees.predict(f, missing="nan"))


def test_zscore_keeps_the_order_and_puts_missing_values_last():
    z = zscore_by_query([3.0, np.nan, 1.0, 2.0, 5.0, 5.0], ["a", "a", "a", "a", "b", "b"])
    assert z[0] > z[3] > z[2] > z[1] and z[4] == z[5] == 0.0


# --- the registered model: evaluate and the service use its route ----------------------------------------

ENG = ["eng_qp_ctr_7d", "eng_qp_impr_28d"]  # query-pair engagement only: a new query has none at all


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from features.build import build_features
    from features.config import FeaturesConfig
    from features.lexical import LEXICAL_FEATURES
    from features.ondemand import OnDemandFeatures
    from features.store import LtrStore
    from features.title_match import TITLE_MATCH
    from ltr import tracking as T
    from ltr.data.dataset import Dataset
    from ltr.serving.demo import demo_dataset

    root = tmp_path_factory.mktemp("cold_route")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    ds_dir = demo_dataset(root / "ds", seed=0)
    feat = root / "features"
    build_features(ds_dir, feat, FeaturesConfig(families=["lexical", "product", "engagement"]), progress=False)
    store = LtrStore(feat).apply()
    store.bulk_materialize(progress=False)
    ds = Dataset.load(ds_dir)
    j = ds.judgments.sort_values(["query_id", "product_id"]).reset_index(drop=True)
    # BM25 and the attribute matches without the typo-forgiving title matches: with those the trees beat every
    # blend on this small shop, and a route the trees keep leaves nothing for these tests to carry
    feats = [f for f in LEXICAL_FEATURES if f not in {f"lex_{n}" for n in TITLE_MATCH}] + ENG
    X = OnDemandFeatures(ds.products).compute(j[["query", "product_id"]], feats)
    eng = pd.concat([store.get_online_features(q, list(g["product_id"])).set_index(g.index)
                     for q, g in j.groupby("query_id")]).loc[j.index, ENG]
    frame = pd.concat([j[["query_id", "product_id", "grade"]], X[feats[:-len(ENG)]], eng], axis=1)
    cfg = TrainConfig(model=MODEL, target=GRADE_LABELS, features=feats)
    trees = fit_ranker(frame, cfg, feats)
    route = ColdRoute(n_folds=3, candidates=("blend",)).fit(frame, cfg, feats)
    unseen = demo_dataset(root / "unseen", n_queries=8, seed=1, impressions=False)
    with T.using_tracking(f"sqlite:///{root}/mlflow.db", "cold-route-test", (root / "artifacts").as_uri()):
        import mlflow
        with mlflow.start_run(run_name="cold-route"):
            info = T.log_ranker(trees, frame[feats])
            T.log_serving_parts(trees, cfg.target, T.ServingParts(bi_encoder=None, cold_route=route))
        T.register_model(info.model_uri, "ltr-cold-route-test")
        yield {"root": root, "ds": ds, "feat": feat, "frame": frame, "feats": feats, "trees": trees, "route": route,
               "uri": "models:/ltr-cold-route-test@champion", "unseen": unseen}
    mp.undo()


def test_the_registered_model_carries_its_route(shop):
    from ltr.serving.model import load_ranker

    lm = load_ranker(shop["uri"])
    route, frame = shop["route"], shop["frame"]
    assert lm.cold_route.scorer_ == route.scorer_ and lm.describe()["cold_route"] == route.scorer_.name
    assert lm.manifest["cold_route"]["validation"] == route.validation_
    assert np.allclose(lm.cold_route.predict(frame, frame["query_id"]), route.predict(frame, frame["query_id"]))


def test_evaluate_scores_cold_queries_through_the_route(shop, monkeypatch):
    from features.ondemand import OnDemandFeatures
    from ltr import evaluate as E
    from ltr.data.dataset import Dataset

    seen, per_query = {}, E._per_query

    def spy(j, scores, k):                                         # the scores evaluate ranks by
        seen["scores"] = scores
        return per_query(j, scores, k)

    monkeypatch.setattr(E, "_per_query", spy)
    r = E.evaluate_dataset(shop["unseen"], shop["uri"], None, bi_encoder=None, progress=False)
    ds = Dataset.load(shop["unseen"])
    j = ds.judgments.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    assert r["cold_route"] == {"choice": shop["route"].scorer_.name, "queries_routed": j["query_id"].nunique()}
    X = OnDemandFeatures(ds.products).compute(j[["query", "product_id"]], shop["feats"]).reindex(columns=shop["feats"])
    routed = shop["route"].predict(X, j["query_id"].to_numpy())
    assert np.allclose(seen["scores"], routed)
    assert not np.allclose(seen["scores"], shop["trees"].predict(X, missing="nan"))   # not the trees' scores


def test_the_service_routes_a_request_without_engagement(shop):
    from fastapi.testclient import TestClient

    from ltr.serving.app import create_app
    from ltr.serving.served_log import read_served_log

    app = create_app(shop["uri"], shop["feat"], products=None, bi_encoder=None, warm=False,
                     log_dir=shop["root"] / "served", serving={"log": {"part_records": 1}})
    route, trees, frame, feats = shop["route"], shop["trees"], shop["frame"], shop["feats"]
    with TestClient(app) as client:
        pids = list(shop["ds"].products["product_id"][:15])
        cold = client.post("/v1/rank", json={"query": "green running shoes 24 oz", "product_ids": pids}).json()
        q = shop["ds"].judgments.sort_values("query_id")["query"].iloc[0]
        rows = frame[frame["query_id"] == frame["query_id"].iloc[0]]
        warm = client.post("/v1/rank", json={"query": q, "product_ids": list(rows["product_id"])}).json()
    assert cold["cold_route"] == route.scorer_.name and warm["cold_route"] is None
    log = read_served_log(shop["root"] / "served").groupby("request_id")["cold_route"].agg(set)
    assert log[cold["request_id"]] == {route.scorer_.name} and log[warm["request_id"]] == {None}   # the log says too
    X = app.state.service.live.assembler.matrix("green running shoes 24 oz", pids,
                                                app.state.service.live.ondemand.positions(pids))[0]
    assert np.isnan(X[:, [feats.index(f) for f in ENG]]).all()
    assert np.allclose([x["score"] for x in sorted(cold["results"], key=lambda x: pids.index(x["product_id"]))],
                       route.predict_matrix(X))
    want = trees.predict(rows[feats], missing="nan")
    got = {x["product_id"]: x["score"] for x in warm["results"]}
    assert np.allclose([got[p] for p in rows["product_id"]], want, rtol=1e-5, atol=1e-6)


def test_a_routed_request_is_explained_by_the_routes_own_arithmetic(shop):
    """explain=true on a cold request: the blend's content model and route feature, summing to the score."""
    from fastapi.testclient import TestClient

    from ltr.serving.app import create_app

    app = create_app(shop["uri"], shop["feat"], products=None, bi_encoder=None, warm=False)
    pids = list(shop["ds"].products["product_id"][:15])
    with TestClient(app) as client:
        cold = client.post("/v1/rank", json={"query": "green running shoes 24 oz", "product_ids": pids,
                                             "explain": True}).json()
    route = shop["route"]
    assert cold["cold_route"] == route.scorer_.name
    for r in cold["results"]:
        e = r["explain"]
        assert e["scorer"] == f"cold_route:{route.scorer_.name}"
        assert abs(e["bias"] + sum(e["contributions"].values()) - r["score"]) < 1e-5
        assert abs(e["margin"] - r["score"]) < 1e-5
        assert e["groups"]["engagement"] == 0.0                    # a cold request: no engagement to credit
        assert e["contributions"][route.scorer_.feature] != 0.0 or r["score"] == 0.0
