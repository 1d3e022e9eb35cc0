"""FastAPI ranking service: `POST /v1/rank`, `GET /health`, `GET /metrics`.

    app = create_app("models:/ltr-ranker@champion", features_dir="runs/x/features", products=None)

- The model is loaded once, by registry alias; /health says which version is live.
- Features: online store (Feast, via features.store.LtrStore) when a features_dir/store is given, then
  request-time features for what the store lacks (features/ondemand.py, cross-encoder behind an LRU
  cache), NaN for anything else (engagement of never-shown pairs, as in training). A store failure
  degrades to request-time features and is counted (ltr_store_errors_total), never a 500.
- Bad input is a 422 whose detail names the field (`loc`) and the fix (`msg`).
- Every served request is appended to LOG_DIR/served-YYYY-MM-DD.jsonl: request id, query, product ids,
  the feature values the model saw, scores and model version (for debugging and for training on logs).
"""
from __future__ import annotations

import json
import math
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from features.ondemand import OnDemandFeatures
from ltr.data.dataset import read_table
from ltr.data.schemas import PRODUCTS, query_id

from .assemble import FeatureAssembler
from .model import LoadedModel, ServingError, load_ranker

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=1000, description="the shopper's search text")
    product_ids: list[str] = Field(..., description="candidate product ids to rank")
    top_k: int | None = Field(None, ge=1, description="return only the best k (default: all)")
    request_id: str | None = Field(None, max_length=200, description="caller's id; generated when absent")


class RankedItem(BaseModel):
    product_id: str
    score: float
    rank: int


class RankResponse(BaseModel):
    request_id: str
    query_id: str
    model_version: str | None
    results: list[RankedItem]
    n_candidates: int
    store: str
    took_ms: float


def _problem(field: str, msg: str, status: int = 422) -> JSONResponse:
    """FastAPI's own 422 shape, so clients parse one error format."""
    return JSONResponse(status_code=status, content={"detail": [{"loc": ["body", field], "msg": msg,
                                                                 "type": "value_error"}]})


def load_products(products: pd.DataFrame | str | Path | None, features_dir: Path | None) -> pd.DataFrame:
    """The catalog: a frame, a products.parquet, a dataset dir, or (None) the dataset the features were built from."""
    if isinstance(products, pd.DataFrame):
        return PRODUCTS.validate(products, where="service catalog")
    if products is None:
        manifest = features_dir / "manifest.json" if features_dir is not None else None
        if manifest is None or not manifest.exists():
            raise ServingError("products not given and no features_dir/manifest.json to find them. Fix: pass "
                               "products=DATASET_DIR (or its products.parquet).")
        products = Path(json.loads(manifest.read_text())["dataset"])
    p = Path(products)
    if p.is_dir():
        p = p / "products.parquet"
    if not p.exists():
        raise ServingError(f"products={products}: no such file. Fix: pass a dataset dir or products.parquet.")
    return read_table(p, PRODUCTS)


class ServedLog:
    """Append-only JSONL log of served features; one file per UTC day, one line per request."""

    def __init__(self, log_dir: str | Path) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, now: datetime | None = None) -> Path:
        return self.dir / f"served-{(now or datetime.now(UTC)):%Y-%m-%d}.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock, open(self.path(), "a", encoding="utf-8") as fh:
            fh.write(line)


def _clean(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


class _Metrics:
    """Prometheus metrics on a per-app registry (several apps in one process do not collide)."""

    def __init__(self, ondemand: OnDemandFeatures | None, lm: LoadedModel) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("ltr_rank_requests", "POST /v1/rank requests by HTTP status", ["status"], registry=r)
        self.errors = Counter("ltr_rank_errors", "failed rank requests by kind", ["kind"], registry=r)
        self.latency = Histogram("ltr_rank_latency_seconds", "POST /v1/rank latency (server side)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.candidates = Histogram("ltr_rank_candidates", "candidates per rank request",
                                    buckets=(1, 10, 25, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.store_errors = Counter("ltr_store_errors", "online store reads that failed (served without)",
                                    registry=r)
        Gauge("ltr_model_info", "the live model", ["name", "version"], registry=r).labels(
            lm.name or lm.uri, lm.version or "").set(1)
        if ondemand is not None:
            c = ondemand.ce_cache
            Gauge("ltr_ce_cache_hits", "cross-encoder cache hits", registry=r).set_function(lambda: c.hits)
            Gauge("ltr_ce_cache_misses", "cross-encoder cache misses", registry=r).set_function(lambda: c.misses)
            Gauge("ltr_ce_cache_size", "cross-encoder cache entries", registry=r).set_function(lambda: len(c))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_app(model_uri: str, features_dir: str | Path | None = None,
               products: pd.DataFrame | str | Path | None = None, *, store: Any = None,
               features_cfg: Any = None, cross_encoder: str | Path | None = None,
               bi_encoder: str | Path | None = "default", max_candidates: int = 1000,
               log_dir: str | Path | None = None, tracking_uri: str | None = None,
               on_missing: Literal["error", "nan"] = "error", ce_cache_size: int = 100_000,
               warm: bool = True, precompute_embeddings: bool = False, ce_backend: str = "torch") -> FastAPI:
    """Build the ranking service.

    model_uri: 'models:/NAME@champion' (or any URI ltr.tracking.load_model takes). features_dir: what
    features.build.build_features wrote (its online store is read with LtrStore); or pass `store`
    (an LtrStore). products: the catalog (frame, products.parquet or dataset dir; default: the dataset
    named in features_dir/manifest.json). cross_encoder: its dir (default: the model run's
    'cross_encoder' artifact). bi_encoder: 'default' (all-MiniLM-L6-v2), a dir, or None.
    on_missing='error' refuses to start when a model feature has no source; 'nan' serves it as NaN.
    precompute_embeddings: embed the whole catalog with the bi-encoder at startup (slower start, faster
    cold requests).
    """
    if not isinstance(max_candidates, int) or max_candidates < 1:
        raise ServingError(f"max_candidates must be a positive int, got {max_candidates!r}. Fix: e.g. 1000.")
    fdir = Path(features_dir).resolve() if features_dir is not None else None
    if fdir is not None and not fdir.is_dir():
        raise ServingError(f"features_dir={features_dir} does not exist. Fix: pass the directory "
                           "build_features wrote, or leave it out to serve request-time features only.")
    lm = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
    catalog = load_products(products, fdir)
    if store is None and fdir is not None:
        from features.store import LtrStore
        store = LtrStore(fdir, features_cfg)
    ondemand = OnDemandFeatures(catalog, cross_encoder=lm.cross_encoder, bi_encoder=bi_encoder,
                                ce_cache_size=ce_cache_size, ce_backend=ce_backend)
    assembler = FeatureAssembler(lm.features, ondemand, store, on_missing=on_missing)
    if warm:
        assembler.warm()
    if precompute_embeddings and "bienc_cos" in assembler.features and assembler.sources["bienc_cos"] != "missing":
        ondemand.precompute_product_embeddings(progress=True)
    known = set(catalog["product_id"])
    metrics = _Metrics(ondemand, lm)
    served = ServedLog(log_dir) if log_dir is not None else None
    compute_lock = threading.Lock()  # one scoring at a time: 2 cores, torch already uses both

    app = FastAPI(title="LTR ranking service", version="1")
    app.state.model, app.state.assembler, app.state.store, app.state.metrics = lm, assembler, store, metrics
    app.state.served_log, app.state.max_candidates = served, max_candidates

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/v1/rank":
            metrics.errors.labels("validation").inc()
            metrics.requests.labels("422").inc()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.post("/v1/rank", response_model=RankResponse)
    def rank(req: RankRequest):
        t0 = time.perf_counter()

        def reject(field: str, msg: str) -> JSONResponse:
            metrics.errors.labels("validation").inc()
            metrics.requests.labels("422").inc()
            return _problem(field, msg)

        q = req.query.strip()
        if not q:
            return reject("query", "query is blank. Fix: send the shopper's search text.")
        ids = [str(p) for p in req.product_ids]
        if not ids:
            return reject("product_ids", "product_ids is empty. Fix: send at least one candidate product id.")
        if len(ids) > max_candidates:
            return reject("product_ids", f"product_ids has {len(ids)} ids; the limit is {max_candidates}. "
                          "Fix: send fewer candidates (retrieve, then rank the top ones).")
        dup = [p for p, c in pd.Series(ids).value_counts().items() if c > 1]
        if dup:
            return reject("product_ids", f"product_ids repeats {len(dup)} id(s), e.g. {dup[:5]}. "
                          "Fix: send each candidate once.")
        unknown = [p for p in ids if p not in known]
        if unknown:
            return reject("product_ids", f"{len(unknown)} product id(s) are not in the catalog, e.g. "
                          f"{unknown[:5]}. Fix: send ids of catalog products.")
        rid = req.request_id or uuid.uuid4().hex
        try:
            with compute_lock:
                X, info = assembler.frame(q, ids)
                scores = lm.ranker.predict(X, missing="nan")
        except Exception:
            metrics.errors.labels("internal").inc()
            metrics.requests.labels("500").inc()
            raise
        if info["store"] == "error":
            metrics.store_errors.inc()
        order = np.lexsort((np.asarray(ids), -scores))  # score desc, id asc
        k = min(req.top_k or len(ids), len(ids))
        results = [RankedItem(product_id=ids[i], score=float(scores[i]), rank=r + 1)
                   for r, i in enumerate(order[:k])]
        took = time.perf_counter() - t0
        if served is not None:
            served.write({
                "request_id": rid, "ts": datetime.now(UTC).isoformat(), "query": q, "query_id": query_id(q),
                "product_ids": ids, "model_uri": lm.uri, "model_version": lm.version, "store": info["store"],
                "features": {f: [_clean(v) for v in X[f].tolist()] for f in X.columns},
                "scores": [float(s) for s in scores], "top_k": k,
            })
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.candidates.observe(len(ids))
        metrics.requests.labels("200").inc()
        return RankResponse(request_id=rid, query_id=query_id(q), model_version=lm.version, results=results,
                            n_candidates=len(ids), store=info["store"], took_ms=round(took * 1000, 3))

    @app.get("/health")
    def health() -> dict[str, Any]:
        st: dict[str, Any] = {"configured": store is not None}
        if store is not None:
            st["views"] = list(getattr(store, "views", []))
            try:
                store.get_online_features("q_health_probe", ["__health_probe__"])
                st["ok"] = True
            except Exception as e:  # noqa: BLE001
                st["ok"], st["error"] = False, f"{type(e).__name__}: {e}"
        ok = st.get("ok", True)
        return {"status": "ok" if ok else "degraded", "model": lm.describe(),
                "features": assembler.features, "feature_sources": assembler.sources,
                "missing_features": assembler.missing, "store": st, "n_products": len(known),
                "max_candidates": max_candidates,
                "ce_cache": {"size": len(ondemand.ce_cache), "hits": ondemand.ce_cache.hits,
                             "misses": ondemand.ce_cache.misses}}

    @app.get("/metrics")
    def prom() -> Response:
        body, ctype = metrics.render()
        return Response(content=body, media_type=ctype)

    return app


__all__ = ["RankRequest", "RankResponse", "ServedLog", "create_app", "load_products"]
