"""Catalogs as they come: a products table with only product_id and title goes through `ltr evaluate`, the
ranking service and the main job's data stages; every absent column is a missing value, as in training."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.build import build_features
from features.config import FeaturesConfig
from features.engagement import engagement_features
from features.lexical import LEXICAL_FEATURES, lexical_features
from features.ondemand import OnDemandFeatures
from features.product import PRODUCT_FEATURES, product_features
from features.store import LtrStore
from ltr import tracking as T
from ltr.data.dataset import Dataset, read_table
from ltr.data.schemas import PRODUCTS, SchemaError, query_id
from ltr.serving.app import create_app
from ltr.serving.demo import demo_dataset, train_and_register
from ltr.serving.served_log import read_served_log

ROOT = Path(__file__).resolve().parents[1]
ENG = ["eng_qp_ctr_7d", "eng_p_ctr_28d"]
FEATURES = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES) + ENG
OPTIONAL = [c.name for c in PRODUCTS.columns if not c.required]
ESCI_GAIN = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}


def title_only(ds_dir: Path) -> Path:
    """Drop every product column but the two required ones, as most public catalogs come."""
    p = pd.read_parquet(ds_dir / "products.parquet")[["product_id", "title"]]
    p.to_parquet(ds_dir / "products.parquet", index=False)
    return ds_dir


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A model trained on a full catalog (lexical, product and engagement features), registered in a temp
    store, and an unseen title-only shop with its own impressions."""
    root = tmp_path_factory.mktemp("catalog")
    full = Dataset.load(demo_dataset(root / "full", seed=0))
    j = full.judgments
    X = OnDemandFeatures(full.products).compute(j[["query", "product_id"]], FEATURES)
    qp, p = engagement_features(full.impressions, [7, 28])
    qp = qp.sort_values("event_timestamp").drop_duplicates(["query_id", "product_id"], keep="last")
    p = p.sort_values("event_timestamp").drop_duplicates("product_id", keep="last")
    X = X.merge(qp[["query_id", "product_id", "eng_qp_ctr_7d"]], on=["query_id", "product_id"], how="left")
    X = X.merge(p[["product_id", "eng_p_ctr_28d"]], on="product_id", how="left")
    store_uri = f"sqlite:///{root}/mlflow.db"
    with T.using_tracking(store_uri, "catalog-test", (root / "artifacts").as_uri()):
        uri = train_and_register(X[FEATURES], j["grade"], j["query_id"], "ltr-catalog-test", n_estimators=40)
        yield {"root": root, "uri": uri, "store_uri": store_uri,
               "title": title_only(demo_dataset(root / "title", n_queries=10, seed=1))}


def _ndcg(scores, pids, grades, k=10):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], pids[i]))
    dcg = sum(ESCI_GAIN[grades[i]] / math.log2(r + 2) for r, i in enumerate(order[:k]))
    ideal = sorted((ESCI_GAIN[g] for g in grades), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else None


def test_only_product_id_and_title_are_required(shop, tmp_path):
    raw = pd.read_parquet(shop["title"] / "products.parquet")
    assert list(PRODUCTS.validate(raw).columns) == ["product_id", "title"]
    with pytest.raises(SchemaError, match="missing required column.*'title'"):
        PRODUCTS.validate(raw[["product_id"]])
    got = read_table(shop["title"] / "products.parquet", PRODUCTS)        # every optional column, all missing
    assert set(OPTIONAL) <= set(got.columns) and got[OPTIONAL].isna().all().all()
    assert got["price"].dtype == "float64" and got["brand"].dtype == object
    nulls = raw.assign(price=None, brand=None)                             # columns of nulls (pyarrow type null)
    nulls.to_parquet(tmp_path / "products.parquet")
    assert read_table(tmp_path / "products.parquet", PRODUCTS)["price"].isna().all()


def test_absent_columns_give_the_features_of_missing_cells(shop):
    raw = pd.read_parquet(shop["title"] / "products.parquet")
    cells = raw.assign(**{c: (np.nan if PRODUCTS.column(c).kind == "float" else None) for c in OPTIONAL})
    pf = product_features(raw)
    pd.testing.assert_frame_equal(pf, product_features(cells))
    assert pf[["prod_price", "prod_rating", "prod_bullets_len", "prod_category_depth"]].isna().all().all()
    assert pf["prod_title_len"].notna().all() and (pf["prod_has_brand"] == 0).all()
    ds = Dataset.load(shop["title"])
    pairs = ds.judgments[["query_id", "product_id"]]
    lex = lexical_features(pairs, ds.queries, raw, progress=False)
    pd.testing.assert_frame_equal(lex, lexical_features(pairs, ds.queries, cells, progress=False))
    assert lex["lex_bm25_title"].notna().all() and lex["lex_bm25_bullets"].isna().all()


def test_ltr_evaluate_on_a_title_only_catalog(shop, tmp_path):
    """Through the real CLI in a fresh process; the model is found through $MLFLOW_TRACKING_URI alone."""
    out = tmp_path / "eval.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_TRACKING_URI": shop["store_uri"], "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "ltr.cli", "evaluate", "--dataset", str(shop["title"]), "--model",
                        shop["uri"], "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["features_missing_non_engagement"] == [] and sorted(rep["features_missing"]) == sorted(ENG)
    assert not (tmp_path / "mlruns").exists()                   # the default store was never touched
    ds = Dataset.load(shop["title"])
    j = ds.judgments.sort_values(["query_id", "product_id"]).reset_index(drop=True)
    lex = lexical_features(j[["query_id", "product_id"]], ds.queries, ds.products, progress=False)
    prod = product_features(ds.products).set_index("product_id").loc[j["product_id"]].reset_index(drop=True)
    X = pd.concat([lex[list(LEXICAL_FEATURES)], prod[list(PRODUCT_FEATURES)]], axis=1).assign(**dict.fromkeys(ENG))
    with T.using_tracking(shop["store_uri"], "catalog-test"):
        j["score"] = T.load_model(shop["uri"]).predict(X[FEATURES].astype(float))
    per = {p["query_id"]: p for p in rep["per_query"]}
    assert len(per) == j["query_id"].nunique() == 10
    for q, g in j.groupby("query_id"):
        want = _ndcg(g["score"].tolist(), g["product_id"].tolist(), g["grade"].tolist())
        assert per[q]["ndcg@10"] == pytest.approx(want)


def test_serving_a_title_only_catalog(shop, tmp_path):
    feat = tmp_path / "features"
    build_features(shop["title"], feat, FeaturesConfig(families=["lexical", "product", "engagement"]), progress=False)
    LtrStore(feat).apply().bulk_materialize(progress=False)
    ds = Dataset.load(shop["title"])
    q = ds.judgments["query"].iloc[0]
    pids = list(ds.judgments.loc[ds.judgments["query"] == q, "product_id"])
    with T.using_tracking(shop["store_uri"], "catalog-test"):
        app = create_app(shop["uri"], feat, products=None, bi_encoder=None, log_dir=tmp_path / "logs",
                         serving={"rerank_k": len(pids), "ce_deadline_ms": 120_000})  # every pair, no deadline
        with TestClient(app) as c:
            r = c.post("/v1/rank", json={"query": q, "product_ids": pids, "request_id": "title-only"})
        model = T.load_model(shop["uri"])
    assert r.status_code == 200, r.text
    # leaving the client closed the app, which flushed its served-feature log
    served = read_served_log(tmp_path / "logs").set_index("product_id").loc[pids].reset_index().astype(
        {f: float for f in model.feature_names_})
    assert served[["prod_price", "prod_rating", "prod_desc_len"]].isna().all().all()
    assert served["prod_title_len"].notna().all() and served[ENG].notna().any().all()
    lex = lexical_features(pd.DataFrame({"query_id": query_id(q), "product_id": pids}), ds.queries, ds.products,
                           progress=False)
    assert np.allclose(served[list(LEXICAL_FEATURES)], lex[list(LEXICAL_FEATURES)], equal_nan=True)
    got = {x["product_id"]: x["score"] for x in r.json()["results"]}
    assert np.allclose([got[p] for p in pids], model.predict(served[FEATURES], missing="nan"), atol=1e-6)


def test_main_job_data_stages_on_a_title_only_catalog(tmp_path):
    """dataset (simulated engagement) -> grader labels -> bi-encoder -> Feast features -> training frame."""
    from ltr.pipeline import (
        RunPaths,
        bi_encoder_scores,
        engagement_cutoff,
        stage_dataset,
        stage_features,
        stage_labels,
        stage_training_frame,
    )
    from ltr.run_config import RunConfig

    src = title_only(demo_dataset(tmp_path / "shop", n_queries=8, seed=2, impressions=False))
    cfg = RunConfig.model_validate({"seed": 1, "dataset": {"source": "dir", "path": str(src)},
                                    "labels": {"cache_path": str(tmp_path / "label_cache.sqlite")}})
    paths = RunPaths(tmp_path / "run")
    ds_dir = stage_dataset(cfg, paths)
    ds = Dataset.load(ds_dir)
    assert ds.engagement_simulated and len(ds.impressions) > 0
    stage_labels(cfg, paths, ds_dir)
    labels = pd.read_parquet(paths.labels)
    assert len(labels) == len(ds.candidates) and labels["score"].between(0, 1).all()
    store = stage_features(cfg, paths, ds_dir, bi_encoder_scores(ds, paths))
    frame = stage_training_frame(cfg, paths, ds, store, engagement_cutoff(ds.impressions, 7))
    assert len(frame) == len(ds.candidates)
    assert frame[["prod_price", "prod_log_rating_count", "prod_category_depth"]].isna().all().all()
    assert frame[["prod_title_len", "lex_bm25_title", "bienc_cos", "content_score"]].notna().all().all()
    assert frame["lex_brand_exact"].isna().all()                      # no brand column: undefined, not 0
