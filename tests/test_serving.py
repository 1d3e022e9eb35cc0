"""The ranking service, end to end with real parts: a real Feast store (SQLite online), a real XGBoost model
registered in a temp MLflow sqlite store (alias champion, cross-encoder logged with it), a tiny random
BERT as cross- and bi-encoder, FastAPI's TestClient and one uvicorn server on a real 127.0.0.1 socket."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from features import biencoder, crossencoder
from features.lexical import LEXICAL_FEATURES, lexical_features
from features.ondemand import ONDEMAND_FEATURES, LRUCache, OnDemandFeatures
from features.product import PRODUCT_FEATURES, product_features
from features.store import LtrStore
from ltr import tracking as T
from ltr.data.schemas import query_id
from ltr.serving.app import RankResponse, create_app
from ltr.serving.model import ServingError, check_bi_encoder, load_ranker
from ltr.serving.served_log import read_served_log
from tests.fixtures.serving_world import ENG, build_world

torch.set_num_threads(2)
FEATURES = list(ONDEMAND_FEATURES) + ENG
MAX = 40
# every candidate through the cross-encoder, no deadline to miss on a busy machine: rankings equal the model's
# on offline features; the phases and their deadline have their own tests (tests/test_serving_phases.py)
EXACT = {"rerank_k": MAX, "ce_deadline_ms": 120_000, "log": {"part_records": 1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))    # downloaded model parts stay in the test's dir
    w = build_world(root, "ltr-serving-test")                  # champion: v1
    with T.using_tracking(w["tracking"], "serving-test", (root / "artifacts").as_uri()):
        app = create_app(w["uri"], w["feat"], products=None, bi_encoder=w["ce"], log_dir=root / "logs",
                         max_candidates=MAX, serving=EXACT)
        yield {**w, "app": app}
    mp.undo()


@pytest.fixture(scope="module")
def client(world):
    with TestClient(world["app"]) as c:
        yield c


def _cands(world, q):
    j = world["ds"].judgments
    return list(j.loc[j["query"] == q, "product_id"])


def _offline_frame(world, q, pids):
    """The model's features for (q, pids) by the *offline* code paths: build's parquet views, score_pairs."""
    ds, feat, ce = world["ds"], world["feat"], world["ce"]
    qid = query_id(q)
    pairs = pd.DataFrame({"query_id": qid, "product_id": pids})
    queries = pd.DataFrame({"query_id": [qid], "query": [q]})
    lex = lexical_features(pairs, queries, ds.products, progress=False)
    prod = product_features(ds.products).set_index("product_id").loc[pids].reset_index(drop=True)
    scorer = crossencoder.CrossEncoderScorer(ce)
    cs = crossencoder.score_pairs(pairs, ds.products, queries, scorer)
    bi = biencoder.score_pairs(pairs, ds.products, queries, encoder=biencoder.BiEncoder(ce))
    qp = pd.read_parquet(feat / "engagement_qp.parquet").sort_values("event_timestamp")
    qp = qp.drop_duplicates(["query_id", "product_id"], keep="last").set_index(["query_id", "product_id"])
    p = pd.read_parquet(feat / "engagement_product.parquet").sort_values("event_timestamp")
    p = p.drop_duplicates("product_id", keep="last").set_index("product_id")
    out = pd.concat([lex[list(LEXICAL_FEATURES)], prod[list(PRODUCT_FEATURES)]], axis=1)
    out["bienc_cos"], out["ce_score"] = bi["bienc_cos"].to_numpy(), cs["ce_score"].to_numpy()
    for f in ENG:
        src = qp if f.startswith("eng_qp") else p
        key = [(qid, x) for x in pids] if f.startswith("eng_qp") else pids
        out[f] = src[f].reindex(key).to_numpy()
    return out[FEATURES]


def _served(world, rid, timeout=20.0):
    """The served-log rows of request `rid` (written by the log's thread, so waited for)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        log = read_served_log(world["root"] / "logs")
        rows = log[log["request_id"] == rid]
        if len(rows):
            return rows.reset_index(drop=True)
        time.sleep(0.05)
    raise AssertionError(f"request {rid} never reached the served log")


def test_rank_equals_model_on_offline_features(world, client):
    q = world["ds"].judgments["query"].iloc[0]
    pids = _cands(world, q)
    r = client.post("/v1/rank", json={"query": q, "product_ids": pids, "request_id": "req-offline"})
    assert r.status_code == 200, r.text
    body = r.json()
    RankResponse.model_validate(body, strict=True)  # the body is built by hand: it must keep the documented schema
    assert r.headers["content-type"] == "application/json"
    assert body["store"] == "ok" and body["model_version"] == "1" and body["n_candidates"] == len(pids)
    scores = [x["score"] for x in body["results"]]
    assert (scores == sorted(scores, reverse=True)
            and [x["rank"] for x in body["results"]] == list(range(1, len(pids) + 1)))
    assert sorted(x["product_id"] for x in body["results"]) == sorted(pids)
    offline = _offline_frame(world, q, pids)
    expected = T.load_model(world["uri"]).predict(offline, missing="nan")
    got = {x["product_id"]: x["score"] for x in body["results"]}
    assert np.allclose([got[p] for p in pids], expected, rtol=1e-5, atol=1e-6)
    rows = _served(world, "req-offline").set_index("product_id").loc[pids]
    served = rows[FEATURES].astype(float).reset_index(drop=True)
    assert np.allclose(served.to_numpy(), offline.to_numpy(), equal_nan=True, atol=1e-5)
    assert (rows["position"].to_numpy() == [next(x["rank"] for x in body["results"] if x["product_id"] == p)
                                            for p in pids]).all()
    assert (rows["model_version"] == "1").all() and body["ce_scored"] == body["ce_wanted"] == len(pids)
    assert served[ENG].notna().any().all()                      # engagement really came from the store


def test_unseen_query_gets_request_time_features_and_nan_engagement(world, client):
    q = "Pink YOGA mat 24 oz"                                    # not in the store: lexical etc. on demand
    pids = list(world["ds"].products["product_id"][:20])
    r = client.post("/v1/rank", json={"query": q, "product_ids": pids, "request_id": "req-unseen", "top_k": 5})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 5
    rows = _served(world, "req-unseen").set_index("product_id").loc[pids].reset_index()
    served = rows[FEATURES].astype(float)
    offline = _offline_frame(world, q, pids)
    assert np.allclose(served[list(ONDEMAND_FEATURES)].to_numpy(), offline[list(ONDEMAND_FEATURES)].to_numpy(),
                       equal_nan=True, atol=1e-5)
    assert served["eng_qp_ctr_7d"].isna().all()                 # never shown: NaN, as in training
    assert served["eng_p_ctr_28d"].notna().any()                # product-level engagement still from the store
    top5 = [x["product_id"] for x in r.json()["results"]]
    full = sorted(zip(rows["score"], pids), key=lambda t: (-t[0], t[1]))
    assert top5 == [p for _, p in full[:5]]


@pytest.mark.parametrize("payload,field,needle", [
    ({"query": "red backpack", "product_ids": []}, "product_ids", "empty"),
    ({"query": "red backpack", "product_ids": [f"D{i:04d}" for i in range(MAX + 1)]}, "product_ids", "limit"),
    ({"query": "red backpack", "product_ids": ["D0001", "NOPE-1"]}, "product_ids", "NOPE-1"),
    ({"query": "red backpack", "product_ids": ["D0001", "D0001"]}, "product_ids", "repeats"),
    ({"query": "   ", "product_ids": ["D0001"]}, "query", "blank"),
    ({"product_ids": ["D0001"]}, "query", "Field required"),
    ({"query": "x", "product_ids": ["D0001"], "top_k": 0}, "top_k", "greater than or equal"),
    ({"query": "x", "product_ids": ["D0001"], "colour": "red"}, "colour", "Extra inputs"),
])
def test_bad_input_is_422_naming_the_field(world, client, payload, field, needle):
    log = world["app"].state.service.served_log
    n_records = log.written_records + log._q.qsize()
    r = client.post("/v1/rank", json=payload)
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["loc"][-1] == field and needle in d["msg"]
    assert log.written_records + log._q.qsize() == n_records  # nothing logged for rejected requests


def test_health_and_metrics(world, client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["store"]["ok"] is True and h["model"]["version"] == "1"
    assert h["model"]["name"] == "ltr-serving-test" and h["features"] == FEATURES and h["missing_features"] == []
    assert h["feature_sources"]["ce_score"] == "ondemand" and h["feature_sources"]["eng_qp_ctr_7d"] == "store"
    assert h["feature_sources"]["lex_bm25_title"] == "store+ondemand"
    before = client.get("/metrics").text
    q = "blue running shoes"
    client.post("/v1/rank", json={"query": q, "product_ids": ["D0001", "D0002"]})
    client.post("/v1/rank", json={"query": q, "product_ids": []})
    m = client.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")

    def val(text, name):
        hit = [ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{") and
               ln.split(" ")[0] == name]
        return float(hit[0].rsplit(" ", 1)[1]) if hit else 0.0

    for name, inc in (('ltr_rank_requests_total{status="200"}', 1), ('ltr_rank_requests_total{status="422"}', 1),
                      ('ltr_rank_errors_total{kind="validation"}', 1), ("ltr_rank_latency_seconds_count", 1)):
        assert val(m.text, name) == val(before, name) + inc, name
    assert 'ltr_model_info{name="ltr-serving-test",version="1"} 1.0' in m.text


def test_row_cache_serves_the_rows_it_would_assemble_until_the_store_file_changes(world, client):
    live = client.app.state.service.live
    a = live.assembler
    q = world["ds"].judgments["query"].iloc[-1]
    pids = _cands(world, q)
    docs = live.ondemand.positions(pids)
    a.matrix(q, pids, docs, skip=("ce",))
    hits, misses = a.row_cache.hits, a.row_cache.misses
    cached, info = a.matrix(q, pids, docs, skip=("ce",))
    assert (a.row_cache.hits - hits, a.row_cache.misses - misses) == (len(pids), 0) and info["store"] == "ok"
    fresh, _ = a._assemble(q, pids, docs, ("ce",))
    np.testing.assert_array_equal(cached, fresh)            # the very values the store and features give now
    assert np.isfinite(cached[:, [a.features.index(f) for f in ENG]]).any()
    online = world["feat"] / "feast" / "online.db"
    st = os.stat(online)
    os.utime(online, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed (as a materialize does)
    misses = a.row_cache.misses
    again, _ = a.matrix(q, pids, docs, skip=("ce",))
    assert a.row_cache.misses - misses == len(pids)         # every row assembled again from the file
    np.testing.assert_array_equal(again, fresh)
    assert client.get("/health").json()["row_cache"]["hits"] >= len(pids)


def test_cross_encoder_cache_hits_on_repeat(world, client):
    od = world["app"].state.service.live.ondemand
    body = {"query": "white desk lamp", "product_ids": ["D0003", "D0009", "D0015"]}
    r1 = client.post("/v1/rank", json=body).json()
    hits, misses = od.ce_cache.hits, od.ce_cache.misses
    r2 = client.post("/v1/rank", json=body).json()
    assert (od.ce_cache.hits, od.ce_cache.misses) == (hits + 3, misses)
    assert r1["results"] == r2["results"]


def test_lru_cache_evicts_least_recent():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)                                               # evicts b, the least recently used
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


def test_real_http_socket(world, client):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(world["app"], host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        t0 = time.time()
        while not server.started and time.time() - t0 < 20:
            time.sleep(0.05)
        assert server.started
        body = {"query": "green coffee mug", "product_ids": ["D0004", "D0010", "D0016", "D0022"]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/rank", json=body, timeout=30)
        assert r.status_code == 200
        ref = client.post("/v1/rank", json=body).json()
        assert [x["product_id"] for x in r.json()["results"]] == [x["product_id"] for x in ref["results"]]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["status"] == "ok"
        assert httpx.post(f"http://127.0.0.1:{port}/v1/rank", json={"query": "x", "product_ids": []},
                          timeout=30).status_code == 422
    finally:
        server.should_exit = True
        th.join(timeout=20)
    assert not th.is_alive()


def test_store_failure_degrades_and_is_counted(world, tmp_path):
    feat = tmp_path / "features"
    shutil.copytree(world["feat"], feat, ignore=shutil.ignore_patterns("feast"))
    broken = LtrStore(feat)                                     # never applied: the online tables do not exist
    app = create_app(world["uri"], feat, products=world["ds"].root, store=broken, bi_encoder=world["ce"])
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "degraded"
        r = c.post("/v1/rank", json={"query": "red backpack", "product_ids": ["D0001", "D0007"]})
        assert r.status_code == 200 and r.json()["store"] == "error"
        assert "ltr_store_errors_total 1.0" in c.get("/metrics").text


def test_startup_errors_name_the_fix(world, tmp_path):
    with pytest.raises(ServingError, match="max_candidates"):
        create_app(world["uri"], world["feat"], max_candidates=0)
    with pytest.raises(ServingError, match="features_dir"):
        create_app(world["uri"], tmp_path / "nope")
    with pytest.raises(ServingError, match="config.json"):
        create_app(world["uri"], world["feat"], cross_encoder=tmp_path)
    with pytest.raises(ServingError, match="bi_encoder"):       # the model needs bienc_cos; no encoder given
        create_app(world["uri"], world["feat"], bi_encoder=None)
    with pytest.raises(ServingError, match="products"):
        create_app(world["uri"], None)
    with pytest.raises(T.TrackingError, match="models:/NAME@champion"):
        create_app("models:/no-such-model@champion", world["feat"])


def test_run_dir_settings_finds_a_pipeline_run(world, tmp_path):
    from ltr.serving.server import run_dir_settings

    run = tmp_path / "run"
    shutil.copytree(world["feat"], run / "features", ignore=shutil.ignore_patterns("feast"))
    shutil.copytree(world["ds"].root, run / "dataset")
    shutil.copytree(world["ce"], run / "cross_encoder" / "llm_fold0")
    s = run_dir_settings(run)
    # the cross-encoder comes from the registered model, never from a folder name in the run dir
    assert s == {"features_dir": run / "features", "products": run / "dataset", "log_dir": run / "served_logs"}
    with pytest.raises(ServingError, match="run_dir"):
        run_dir_settings(tmp_path / "absent")


def test_precomputed_product_embeddings_give_the_same_cosine(world):
    ds, ce = world["ds"], world["ce"]
    pairs = pd.DataFrame({"query": "red backpack", "product_id": list(ds.products["product_id"][:10])})
    lazy = OnDemandFeatures(ds.products, None, ce).compute(pairs, ["bienc_cos"])
    od = OnDemandFeatures(ds.products, None, ce)
    assert od.precompute_product_embeddings(progress=False) == len(ds.products)
    assert od._bi_encoder().n_cached >= len(ds.products)
    assert np.allclose(od.compute(pairs, ["bienc_cos"])["bienc_cos"], lazy["bienc_cos"], atol=1e-5)


def test_new_queries_are_embedded_in_onnx_when_the_export_is_there(world, tmp_path):
    """ServingConfig.query_backend: 'auto' takes the bi-encoder's export under the embedding cache (as `ltr
    features build` leaves it) and serves the same cosines; 'onnx' without one refuses to start, naming the fix."""
    from features.biencoder import BiEncoder
    from features.ondemand import OnDemandError
    from features.query_encoder import export_query_encoder

    kw = dict(products=None, bi_encoder=world["ce"], max_candidates=MAX, tracking_uri=world["tracking"])
    with pytest.raises(OnDemandError, match="ltr features build"):
        create_app(world["uri"], world["feat"], embedding_cache=tmp_path / "empty", serving={"query_backend": "onnx"},
                   **kw)
    cache = tmp_path / "emb"
    assert export_query_encoder(BiEncoder(world["ce"]), cache) is not None
    app = create_app(world["uri"], world["feat"], embedding_cache=cache, serving={**EXACT, "query_backend": "onnx"},
                     **kw)
    q = "Pink YOGA mat 24 oz"
    pids = list(world["ds"].products["product_id"][:20])
    with TestClient(app) as c:
        assert c.get("/health").json()["model"]["bi_encoder_queries"] == "onnx"
        assert c.post("/v1/rank", json={"query": q, "product_ids": pids}).status_code == 200
    live = app.state.service.live
    X, _ = live.assembler.matrix(q + " again", pids, live.ondemand.positions(pids))
    served = X[:, live.assembler.features.index("bienc_cos")]
    offline = _offline_frame(world, q + " again", pids)["bienc_cos"].to_numpy()
    np.testing.assert_allclose(served, offline, atol=1e-5)
    with TestClient(world["app"]) as c:      # the module's service: no export in its cache, so torch
        assert c.get("/health").json()["model"]["bi_encoder_queries"] == "torch"


# --- a self-contained model: its cross-encoder and bi-encoder identity travel with it ----------------------

def _register(world, name: str, ce_dir, bi_encoder, int8: bool = False) -> str:
    """A ranker on the module's features, logged with its ServingParts and registered as NAME@champion."""
    import mlflow

    from ltr.rankers import XGBLambdaMART
    from ltr.train_config import TrainConfig

    X, j = world["X"], world["j"]
    model = XGBLambdaMART(n_estimators=20, max_depth=3, early_stopping_rounds=None, random_state=0,
                          n_jobs=2).fit(X, j["grade"].to_numpy(float), j["query_id"].to_numpy())
    parts = T.ServingParts(cross_encoder=ce_dir, cross_encoder_choice="the test's tiny model", bi_encoder=bi_encoder,
                           data_fingerprints={"judgments": "j-fingerprint"}, cross_encoder_int8=int8)
    with mlflow.start_run(run_name=name):
        info = T.log_ranker(model, X)
        T.log_serving_parts(model, TrainConfig().target, parts)
    T.register_model(info.model_uri, name)
    return f"models:/{name}@champion"


def _versioned_copy(src, dst, version: str):
    from features.crossencoder import META_FILE

    shutil.copytree(src, dst)
    (dst / META_FILE).write_text(json.dumps({"version": version}))
    return dst


@pytest.fixture(scope="module")
def self_contained(world, tmp_path_factory):
    ce = _versioned_copy(world["ce"], tmp_path_factory.mktemp("sc") / "ce", "ce-test-1")
    return {"uri": _register(world, "ltr-self-contained", ce, world["ce"]), "ce": ce}


def _rank_first_query(world, app):
    """(query, candidates, the /v1/rank response, /health's model section) for the world's first query."""
    q = world["ds"].judgments["query"].iloc[0]
    pids = _cands(world, q)
    with TestClient(app) as c:
        r = c.post("/v1/rank", json={"query": q, "product_ids": pids})
        model = c.get("/health").json()["model"]
    assert r.status_code == 200, r.text
    return q, pids, r, model


def test_self_contained_model_serves_with_only_its_uri(world, self_contained):
    app = create_app(self_contained["uri"], world["feat"], bi_encoder=world["ce"])   # no cross_encoder given
    lm = app.state.service.live.model
    assert lm.cross_encoder == Path(os.environ["LTR_MODEL_CACHE"]) / lm.run_id / "cross_encoder"
    assert T.dir_digest(lm.cross_encoder) == T.dir_digest(self_contained["ce"])
    q, pids, r, model = _rank_first_query(world, app)
    expected = T.load_model(self_contained["uri"]).predict(_offline_frame(world, q, pids), missing="nan")
    got = {x["product_id"]: x["score"] for x in r.json()["results"]}
    assert np.allclose([got[p] for p in pids], expected, rtol=1e-5, atol=1e-6)
    assert model["self_contained"] and model["cross_encoder_version"] == "ce-test-1"
    assert model["ce_backend"] == "torch"                      # 'auto': no int8 export in this artifact
    assert model["cross_encoder_choice"] == "the test's tiny model" and model["feature_service"] == "serving"
    assert model["label_transform"]["alpha"] == 10.0 and model["data_fingerprints"] == {"judgments": "j-fingerprint"}


def test_a_changed_cache_is_replaced_and_a_changed_artifact_refused(world, self_contained):
    from mlflow import MlflowClient

    lm = load_ranker(self_contained["uri"])
    (lm.cross_encoder / "junk.bin").write_bytes(b"x")         # the cached copy no longer matches the record
    again = load_ranker(self_contained["uri"])
    assert again.cross_encoder == lm.cross_encoder and not (again.cross_encoder / "junk.bin").exists()
    art = Path(MlflowClient().get_run(lm.run_id).info.artifact_uri.removeprefix("file://")) / "cross_encoder"
    cfg = art / "config.json"
    original = cfg.read_bytes()
    try:
        cfg.write_bytes(original + b"\n")                      # the stored artifact changed after logging
        shutil.rmtree(lm.cross_encoder)
        with pytest.raises(ServingError, match="does not match its record.*digest"):
            load_ranker(self_contained["uri"])
        assert not lm.cross_encoder.exists()                   # nothing half-verified left in the cache
    finally:
        cfg.write_bytes(original)
    assert load_ranker(self_contained["uri"]).cross_encoder == lm.cross_encoder


def test_an_explicit_cross_encoder_must_be_the_recorded_one(world, self_contained, tmp_path):
    other = _versioned_copy(world["ce"], tmp_path / "other", "ce-other")
    with pytest.raises(ServingError, match="'ce-other'.*'ce-test-1'"):
        load_ranker(self_contained["uri"], cross_encoder=other)
    assert load_ranker(self_contained["uri"], cross_encoder=self_contained["ce"]).cross_encoder == self_contained["ce"]


def test_a_model_without_its_cross_encoder_refuses(world):
    uri = _register(world, "ltr-no-ce", None, world["ce"])     # uses ce_score, records no cross-encoder
    with pytest.raises(ServingError, match="records no cross-encoder"):
        create_app(uri, world["feat"], bi_encoder=world["ce"])


def test_the_bi_encoder_must_be_the_recorded_one(world, self_contained):
    lm = load_ranker(self_contained["uri"])
    check_bi_encoder(lm, world["ce"])                           # the one bienc_cos came from: fine
    with pytest.raises(ServingError, match="bi-encoder .* is not the one"):
        check_bi_encoder(lm, "default")                         # all-MiniLM-L6-v2 is another encoder


def test_a_missing_tracking_store_is_refused_not_created(world, tmp_path):
    import mlflow

    before = mlflow.get_tracking_uri()
    with pytest.raises(ServingError, match="does not exist.*MLFLOW_TRACKING_URI"):
        load_ranker("models:/ltr-serving-test@champion", tracking_uri=f"sqlite:///{tmp_path}/none/mlflow.db")
    assert not (tmp_path / "none").exists() and mlflow.get_tracking_uri() == before


def test_the_int8_export_is_built_at_registration_checked_and_served(world, tmp_path):
    from features.crossencoder.onnx_export import int8_export

    ce = _versioned_copy(world["ce"], tmp_path / "ce", "ce-test-int8")
    uri = _register(world, "ltr-int8", ce, world["ce"], int8=True)
    assert [p.name for p in (ce / "onnx").iterdir()] == [int8_export(ce).name]   # the int8 file only, no fp32
    app = create_app(uri, world["feat"], bi_encoder=world["ce"], serving=EXACT)   # ce_backend 'auto'
    lm = app.state.service.live.model
    cached = int8_export(lm.cross_encoder)                     # downloaded with the model: same weights' hash
    assert cached is not None and cached.read_bytes() == int8_export(ce).read_bytes()
    _, pids, r, model = _rank_first_query(world, app)
    assert model["ce_backend"] == "onnx-int8" and r.json()["ce_scored"] == len(pids)
    cached.write_bytes(cached.read_bytes()[:-1] + b"x")        # a changed export is not served: fetched again
    assert int8_export(load_ranker(uri).cross_encoder).read_bytes() == int8_export(ce).read_bytes()
