"""`evaluate_dataset` on judged dataset dirs the model never saw: metrics checked against a hand-written
NDCG, on-the-fly features checked against the offline feature functions, and the shared ESCI sample."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.engagement import engagement_features
from features.lexical import LEXICAL_FEATURES, lexical_features
from features.ondemand import OnDemandError, OnDemandFeatures
from features.product import PRODUCT_FEATURES, product_features
from ltr import tracking as T
from ltr.data.dataset import Dataset, DatasetError
from ltr.data.esci import esci_sample_dir
from ltr.data.schemas import SchemaError
from ltr.evaluate import evaluate_dataset
from ltr.serving.demo import demo_dataset, train_and_register
from ltr.serving.model import ServingError

FEATURES = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES) + ["eng_qp_ctr_7d"]
ESCI_GAIN = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    train = Dataset.load(demo_dataset(root / "train", seed=0))
    unseen = demo_dataset(root / "unseen", n_queries=10, seed=1, impressions=False)
    j = train.judgments
    X = OnDemandFeatures(train.products).compute(j[["query", "product_id"]], FEATURES)
    qp, _ = engagement_features(train.impressions, [7, 28])
    last = qp.sort_values("event_timestamp").drop_duplicates(["query_id", "product_id"], keep="last")
    X = X.merge(last[["query_id", "product_id", "eng_qp_ctr_7d"]], on=["query_id", "product_id"], how="left")
    assert X["eng_qp_ctr_7d"].notna().any()
    with T.using_tracking(f"sqlite:///{root}/mlflow.db", "evaluate-test", (root / "artifacts").as_uri()):
        uri = train_and_register(X[FEATURES], j["grade"], j["query_id"], "ltr-eval-test", n_estimators=40)
        yield {"root": root, "uri": uri, "unseen": unseen}


def _ndcg(scores, pids, grades, gain, k=10):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], pids[i]))
    dcg = sum(gain(grades[i]) / math.log2(r + 2) for r, i in enumerate(order[:k]))
    ideal = sorted((gain(g) for g in grades), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else None


def test_request_time_features_equal_the_offline_functions(setup):
    ds = Dataset.load(setup["unseen"])
    j = ds.judgments
    got = OnDemandFeatures(ds.products).compute(j[["query", "product_id"]])
    lex = lexical_features(j[["query_id", "product_id"]], ds.queries, ds.products, progress=False)
    assert np.array_equal(got[list(LEXICAL_FEATURES)].to_numpy(), lex[list(LEXICAL_FEATURES)].to_numpy(),
                          equal_nan=True)
    prod = product_features(ds.products).set_index("product_id").loc[j["product_id"]]
    assert np.array_equal(got[list(PRODUCT_FEATURES)].to_numpy(), prod[list(PRODUCT_FEATURES)].to_numpy(),
                          equal_nan=True)
    assert list(got.columns[:2]) == ["query_id", "product_id"] and "ce_score" not in got   # no encoders given
    with pytest.raises(OnDemandError, match="pairs.product_id.*NOPE"):
        OnDemandFeatures(ds.products).compute(pd.DataFrame({"query": ["a"], "product_id": ["NOPE"]}))


def test_evaluate_unseen_dataset_matches_hand_computed_metrics(setup, tmp_path):
    out = tmp_path / "eval" / "result.json"
    r = evaluate_dataset(setup["unseen"], setup["uri"], out, progress=False)
    assert json.loads(out.read_text()) == r                    # written as strict JSON (no NaN)
    ds = Dataset.load(setup["unseen"])
    j = ds.judgments
    assert r["n_queries"] == j["query_id"].nunique() == 10 and r["n_pairs"] == len(j)
    assert r["features_missing"] == ["eng_qp_ctr_7d"] and r["features_missing_non_engagement"] == []
    assert r["model"]["version"] == "1" and r["model"]["name"] == "ltr-eval-test"
    # independent path: offline feature functions, NaN engagement, the registered model, a hand-written NDCG
    lex = lexical_features(j[["query_id", "product_id"]], ds.queries, ds.products, progress=False)
    prod = product_features(ds.products).set_index("product_id").loc[j["product_id"]].reset_index(drop=True)
    X = pd.concat([lex[list(LEXICAL_FEATURES)], prod[list(PRODUCT_FEATURES)]], axis=1).assign(eng_qp_ctr_7d=np.nan)
    j = j.assign(score=T.load_model(setup["uri"]).predict(X[FEATURES]))
    per = {p["query_id"]: p for p in r["per_query"]}
    const = []
    for q, g in j.groupby("query_id"):
        s, pids, gr = g["score"].tolist(), g["product_id"].tolist(), g["grade"].tolist()
        assert per[q]["ndcg@10"] == pytest.approx(_ndcg(s, pids, gr, ESCI_GAIN.get))
        assert per[q]["ndcg_exp@10"] == pytest.approx(_ndcg(s, pids, gr, lambda x: 2.0 ** x - 1))
        top = [gr[i] for i in sorted(range(len(s)), key=lambda i: (-s[i], pids[i]))[:10]]
        assert per[q]["irrelevant@10"] == pytest.approx(sum(x == 0 for x in top) / len(top))
        const.append(_ndcg([0.0] * len(s), pids, gr, ESCI_GAIN.get))
    assert r["ndcg@10"] == pytest.approx(np.mean([p["ndcg@10"] for p in r["per_query"]]))
    assert r["ndcg@10"] > np.mean(const) + 0.1                 # the model ranks better than no model


def test_errors_name_the_fix_and_write_nothing(setup, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate_dataset(tmp_path / "missing", setup["uri"], out)
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.read_parquet(Path(setup["unseen"]) / "products.parquet").to_parquet(bad / "products.parquet")
    pd.DataFrame({"query": ["x"], "product_id": ["D0001"], "grade": [5]}).to_parquet(bad / "judgments.parquet")
    with pytest.raises(SchemaError, match="'grade'"):
        evaluate_dataset(bad, setup["uri"], out)
    with pytest.raises(ServingError, match="k must be"):
        evaluate_dataset(setup["unseen"], setup["uri"], out, k=0)
    assert not out.exists()


def test_max_queries_subsets_deterministically(setup):
    a = evaluate_dataset(setup["unseen"], setup["uri"], None, max_queries=3, progress=False)
    b = evaluate_dataset(setup["unseen"], setup["uri"], None, max_queries=3, progress=False)
    assert a["n_queries"] == 3 and a["per_query"] == b["per_query"]


def test_evaluate_on_the_shared_esci_sample(setup, tmp_path):
    d = esci_sample_dir()
    if not (d / "judgments.parquet").exists():
        pytest.skip(f"shared ESCI sample not found at {d} (set LTR_ESCI_DIR to its directory)")
    r = evaluate_dataset(d, setup["uri"], tmp_path / "esci.json", progress=False)
    j = pd.read_parquet(d / "judgments.parquet")
    assert r["n_queries"] == j["query"].nunique() and r["n_pairs"] == len(j)
    assert 0 < r["ndcg@10"] <= 1 and 0 < r["ndcg_exp@10"] <= 1 and 0 <= r["irrelevant@10"] <= 1
    assert len(r["per_query"]) == r["n_queries"]
    assert json.loads((tmp_path / "esci.json").read_text())["ndcg@10"] == r["ndcg@10"]


def test_ce_path_is_an_alias_of_cross_encoder(setup, tmp_path):
    with pytest.raises(ServingError, match="cross-encoder once"):
        evaluate_dataset(setup["unseen"], setup["uri"], None, cross_encoder=tmp_path / "a", ce_path=tmp_path / "b")


def _content_model(setup, tmp_path, name: str, serving: bool) -> tuple[str, Path]:
    """A ranker that uses ce_score and bienc_cos (a tiny cross-encoder doubles as bi-encoder), registered in
    the module's store with its ServingParts (serving=True) or as a bare model without any part."""
    import mlflow

    from features.crossencoder import META_FILE
    from ltr.rankers import XGBLambdaMART
    from ltr.serving.demo import save_encoder
    from ltr.train_config import TrainConfig

    ce = save_encoder(tmp_path / "ce")
    (ce / META_FILE).write_text(json.dumps({"version": "ce-eval-1"}))
    train = Dataset.load(setup["root"] / "train")
    j = train.judgments
    feats = FEATURES[:-1] + ["bienc_cos", "ce_score"]
    X = OnDemandFeatures(train.products, ce, ce).compute(j[["query", "product_id"]], feats)[feats]
    model = XGBLambdaMART(n_estimators=30, max_depth=3, early_stopping_rounds=None, random_state=0, n_jobs=2)
    model.fit(X, j["grade"].to_numpy(float), j["query_id"].to_numpy())
    with mlflow.start_run(run_name=name):
        info = T.log_ranker(model, X)
        if serving:
            T.log_serving_parts(model, TrainConfig().target, T.ServingParts(cross_encoder=ce, bi_encoder=ce))
    T.register_model(info.model_uri, name)
    return f"models:/{name}@champion", ce


def test_evaluate_needs_only_the_model_uri(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("LTR_MODEL_CACHE", str(tmp_path / "cache"))
    uri, ce = _content_model(setup, tmp_path, "ltr-eval-self-contained", serving=True)
    r = evaluate_dataset(setup["unseen"], uri, None, bi_encoder=ce, progress=False)
    assert r["features_missing_non_engagement"] == [] and r["feature_sources"]["ce_score"] == "ondemand"
    assert r["model"]["cross_encoder_version"] == "ce-eval-1" and r["model"]["self_contained"]
    assert r["model"]["cross_encoder"].startswith(str(tmp_path / "cache"))
    explicit = evaluate_dataset(setup["unseen"], uri, None, bi_encoder=ce, cross_encoder=ce, progress=False)
    assert r["per_query"] == explicit["per_query"]               # the downloaded copy scores as the original
    base = r["bienc_zero_shot"]                                  # reported beside it, paired on the same queries
    assert 0 <= base["ndcg@10"] <= 1 and base["model_vs_bienc"]["n_queries"] == r["n_queries_with_relevant"]
    assert base["model_vs_bienc"]["diff"] == pytest.approx(r["ndcg@10"] - base["ndcg@10"])
    with pytest.raises(ServingError, match="bi-encoder"):         # not the encoder bienc_cos came from
        evaluate_dataset(setup["unseen"], uri, None, progress=False)


def test_a_model_without_its_cross_encoder_is_refused_not_scored_with_nan(setup, tmp_path):
    uri, ce = _content_model(setup, tmp_path, "ltr-eval-bare", serving=False)
    out = tmp_path / "r.json"
    with pytest.raises(ServingError, match=r"\['ce_score'\] cannot be computed.*--ce-model"):
        evaluate_dataset(setup["unseen"], uri, out, bi_encoder=ce, progress=False)
    assert not out.exists()
    r = evaluate_dataset(setup["unseen"], uri, None, bi_encoder=ce, on_missing="nan", progress=False)
    assert r["features_missing_non_engagement"] == ["ce_score"]  # a degraded model only when asked for
