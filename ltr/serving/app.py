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
from dataclasses import dataclass, field
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
from .model import LoadedModel, ServingError, check_bi_encoder, load_ranker

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

    def rejected(self) -> None:
        self.errors.labels("validation").inc()
        self.requests.labels("422").inc()

    def failed(self) -> None:
        self.errors.labels("internal").inc()
        self.requests.labels("500").inc()

    def served(self, seconds: float, n_candidates: int) -> None:
        self.latency.observe(seconds)
        self.candidates.observe(n_candidates)
        self.requests.labels("200").inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass
class ServiceState:
    """Everything a request needs, all loaded before the port opens: a slow or failing load shows at
    startup, not on the first shopper's request."""

    model: LoadedModel
    assembler: FeatureAssembler
    ondemand: OnDemandFeatures
    store: Any
    known: set[str]
    metrics: _Metrics
    served_log: ServedLog | None
    max_candidates: int
    # one scoring at a time: 2 cores, and torch already uses both
    compute_lock: threading.Lock = field(default_factory=threading.Lock)


def _checked_features_dir(features_dir: str | Path | None, max_candidates: int) -> Path | None:
    """Settings that are cheap to check are checked before the slow model and encoder loads."""
    if not isinstance(max_candidates, int) or max_candidates < 1:
        raise ServingError(f"max_candidates must be a positive int, got {max_candidates!r}. Fix: e.g. 1000.")
    fdir = Path(features_dir).resolve() if features_dir is not None else None
    if fdir is not None and not fdir.is_dir():
        raise ServingError(f"features_dir={features_dir} does not exist. Fix: pass the directory "
                           "build_features wrote, or leave it out to serve request-time features only.")
    return fdir


def _open_store(store: Any, fdir: Path | None, features_cfg: Any) -> Any:
    """A given store wins (tests, a store shared by several apps); else the one build_features described."""
    if store is None and fdir is not None:
        from features.store import LtrStore
        return LtrStore(fdir, features_cfg)
    return store


def _prepare(assembler: FeatureAssembler, ondemand: OnDemandFeatures, warm: bool, precompute_embeddings: bool) -> None:
    """Pay for encoder loading (and, if asked, catalog embeddings) at startup instead of on the first requests."""
    if warm:
        assembler.warm()
    if precompute_embeddings and "bienc_cos" in assembler.features and assembler.sources["bienc_cos"] != "missing":
        ondemand.precompute_product_embeddings(progress=True)


def request_problem(query: str, ids: list[str], state: ServiceState) -> tuple[str, str] | None:
    """(field, message) of the first thing wrong with a request that pydantic's schema cannot see."""
    if not query:
        return "query", "query is blank. Fix: send the shopper's search text."
    if not ids:
        return "product_ids", "product_ids is empty. Fix: send at least one candidate product id."
    if len(ids) > state.max_candidates:
        return "product_ids", (f"product_ids has {len(ids)} ids; the limit is {state.max_candidates}. "
                               "Fix: send fewer candidates (retrieve, then rank the top ones).")
    dup = [p for p, c in pd.Series(ids).value_counts().items() if c > 1]
    if dup:
        return "product_ids", f"product_ids repeats {len(dup)} id(s), e.g. {dup[:5]}. Fix: send each candidate once."
    unknown = [p for p in ids if p not in state.known]
    if unknown:
        return "product_ids", (f"{len(unknown)} product id(s) are not in the catalog, e.g. {unknown[:5]}. "
                               "Fix: send ids of catalog products.")
    return None


def _features_and_scores(state: ServiceState, query: str,
                         ids: list[str]) -> tuple[pd.DataFrame, dict[str, Any], np.ndarray]:
    """Features and scores; a failure is counted as a 500 here, since FastAPI answers it past the handler."""
    try:
        with state.compute_lock:
            X, info = state.assembler.frame(query, ids)
            scores = state.model.ranker.predict(X, missing="nan")
    except Exception:
        state.metrics.failed()
        raise
    if info["store"] == "error":
        state.metrics.store_errors.inc()
    return X, info, scores


def _ranked(ids: list[str], scores: np.ndarray, top_k: int | None) -> list[RankedItem]:
    order = np.lexsort((np.asarray(ids), -scores))  # score desc, then id: ties rank the same on every replica
    k = min(top_k or len(ids), len(ids))
    return [RankedItem(product_id=ids[i], score=float(scores[i]), rank=r + 1) for r, i in enumerate(order[:k])]


def _log_served(state: ServiceState, rid: str, query: str, ids: list[str], X: pd.DataFrame,
                info: dict[str, Any], scores: np.ndarray, k: int) -> None:
    """One line with the exact feature values the model saw, to debug a ranking and to train on logs."""
    lm = state.model
    state.served_log.write({
        "request_id": rid, "ts": datetime.now(UTC).isoformat(), "query": query, "query_id": query_id(query),
        "product_ids": ids, "model_uri": lm.uri, "model_version": lm.version, "store": info["store"],
        "features": {f: [_clean(v) for v in X[f].tolist()] for f in X.columns},
        "scores": [float(s) for s in scores], "top_k": k,
    })


def rank_request(state: ServiceState, req: RankRequest) -> RankResponse | JSONResponse:
    """POST /v1/rank, as a plain function of the state so it can run (and be tested) without HTTP."""
    t0 = time.perf_counter()
    q, ids = req.query.strip(), [str(p) for p in req.product_ids]
    problem = request_problem(q, ids, state)
    if problem is not None:
        state.metrics.rejected()
        return _problem(*problem)
    rid = req.request_id or uuid.uuid4().hex
    X, info, scores = _features_and_scores(state, q, ids)
    results = _ranked(ids, scores, req.top_k)
    took = time.perf_counter() - t0
    if state.served_log is not None:
        _log_served(state, rid, q, ids, X, info, scores, len(results))
    state.metrics.served(time.perf_counter() - t0, len(ids))
    return RankResponse(request_id=rid, query_id=query_id(q), model_version=state.model.version, results=results,
                        n_candidates=len(ids), store=info["store"], took_ms=round(took * 1000, 3))


def _store_health(store: Any) -> dict[str, Any]:
    """Probe with a real read: a store can be configured and still fail (tables never materialized)."""
    st: dict[str, Any] = {"configured": store is not None}
    if store is not None:
        st["views"] = list(getattr(store, "views", []))
        try:
            store.get_online_features("q_health_probe", ["__health_probe__"])
            st["ok"] = True
        except Exception as e:  # noqa: BLE001
            st["ok"], st["error"] = False, f"{type(e).__name__}: {e}"
    return st


def health_report(state: ServiceState) -> dict[str, Any]:
    """GET /health: which model version is live and where each feature comes from; 'degraded' when the
    store fails, since requests are still served, from request-time features."""
    st = _store_health(state.store)
    a, cache = state.assembler, state.ondemand.ce_cache
    return {"status": "ok" if st.get("ok", True) else "degraded", "model": state.model.describe(),
            "features": a.features, "feature_sources": a.sources, "missing_features": a.missing, "store": st,
            "n_products": len(state.known), "max_candidates": state.max_candidates,
            "ce_cache": {"size": len(cache), "hits": cache.hits, "misses": cache.misses}}


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # schema errors never reach the rank handler, so they are counted here
        if request.url.path == "/v1/rank":
            state.metrics.rejected()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.post("/v1/rank", response_model=RankResponse)
    def rank(req: RankRequest):
        return rank_request(state, req)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return health_report(state)

    @app.get("/metrics")
    def prom() -> Response:
        body, ctype = state.metrics.render()
        return Response(content=body, media_type=ctype)


def build_app(state: ServiceState) -> FastAPI:
    """The HTTP layer over a loaded state, kept apart from loading so the routes can be served from any state."""
    app = FastAPI(title="LTR ranking service", version="1")
    app.state.model, app.state.assembler, app.state.store = state.model, state.assembler, state.store
    app.state.metrics, app.state.served_log = state.metrics, state.served_log
    app.state.max_candidates, app.state.service = state.max_candidates, state
    _add_routes(app, state)
    return app


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
    tracking_uri: default $MLFLOW_TRACKING_URI, else ltr.tracking.DEFAULT_TRACKING_URI.
    on_missing='error' refuses to start when a model feature has no source; 'nan' serves it as NaN.
    precompute_embeddings: embed the whole catalog with the bi-encoder at startup (slower start, faster
    cold requests).
    """
    fdir = _checked_features_dir(features_dir, max_candidates)
    lm = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
    check_bi_encoder(lm, bi_encoder)
    catalog = load_products(products, fdir)
    store = _open_store(store, fdir, features_cfg)
    ondemand = OnDemandFeatures(catalog, cross_encoder=lm.cross_encoder, bi_encoder=bi_encoder,
                                ce_cache_size=ce_cache_size, ce_backend=ce_backend)
    assembler = FeatureAssembler(lm.features, ondemand, store, on_missing=on_missing)
    _prepare(assembler, ondemand, warm, precompute_embeddings)
    return build_app(ServiceState(model=lm, assembler=assembler, ondemand=ondemand, store=store,
                                  known=set(catalog["product_id"]), metrics=_Metrics(ondemand, lm),
                                  served_log=ServedLog(log_dir) if log_dir is not None else None,
                                  max_candidates=max_candidates))


__all__ = ["RankRequest", "RankResponse", "ServedLog", "ServiceState", "build_app", "create_app", "health_report",
           "load_products", "rank_request", "request_problem"]
