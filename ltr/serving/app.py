"""FastAPI ranking service: `POST /v1/rank`, `GET /health`, `GET /metrics`.

    app = create_app("models:/ltr-ranker@champion", features_dir="runs/x/features", products=None)

- The model is followed by registry alias (`serving.reload_poll_s`): a new version is loaded off the request
  path and swapped in whole (ltr/serving/live.py, reload.py); every response names the version that scored it.
- Ranking is phased under a per-request deadline (ltr/serving/phases.py): the model without the cross-encoder
  over every candidate, the cross-encoder on the top `rerank_k` (batched across requests), the final reorder.
- Features: online store (Feast, via features.store.LtrStore) when a features_dir/store is given, then
  request-time features for what the store lacks (features/ondemand.py), NaN for anything else (engagement of
  never-shown pairs, as in training). A store that fails (missing, moved, truncated, locked, corrupt) degrades
  the response (`degraded: true`, request-time features only) and /health; it recovers when the file is back.
- Bounds before work (ltr/serving/limits.py): body size 413, requests in progress 503; bad fields 422 naming
  the field (`loc`) and the fix (`msg`).
- Served features go to parquet off the request path (ltr/serving/served_log.py), joinable by request id.
- With a challenger (`challenger=models:/NAME@challenger`), a share of requests (`serving.interleave_share`,
  chosen by request id) is answered by team-draft interleaving of champion and challenger (ltr/interleaving.py);
  each result names the arm that placed it, and so does the served log. The challenger follows its own alias.
"""
from __future__ import annotations

import json
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
from pydantic_core import to_json

from features.ondemand import OnDemandFeatures, family_of
from ltr.data.dataset import read_table
from ltr.data.schemas import PRODUCTS, query_id
from ltr.interleaving import ARMS, in_share, request_seed, team_draft

from .config import ServingConfig
from .gate import FifoGate
from .limits import RequestLimits
from .live import LiveModel, build_live
from .metrics import ServiceMetrics
from .model import LoadedModel, ServingError, check_bi_encoder, load_ranker, public, serving_ce_backend
from .phases import Ranked
from .phases import rank as rank_phases
from .reload import ModelWatcher
from .served_log import ServedLog


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=1000, description="the shopper's search text")
    product_ids: list[str] = Field(..., description="candidate product ids to rank")
    top_k: int | None = Field(None, ge=1, description="return only the best k (default: all)")
    request_id: str | None = Field(None, max_length=200, description="caller's id; generated when absent")
    explain: bool = Field(False, description="per result: the features as served and each one's exact "
                          "contribution to the score (TreeSHAP), the phase and scorer, the content vs "
                          "engagement share (ltr/serving/explain.py)")


class RankedItem(BaseModel):
    product_id: str
    score: float
    rank: int
    phase: int = Field(description="2: re-scored with the cross-encoder; 1: first phase only")
    arm: Literal["champion", "challenger"] | None = Field(
        None, description="interleaved requests: the model whose pick this result is (its score is that "
        "model's); null otherwise")
    explain: dict[str, Any] | None = Field(None, description="with explain=true: features, contributions, bias, "
                                           "margin (= bias + contributions = score), scorer, groups, shares")


class RankResponse(BaseModel):
    request_id: str
    query_id: str
    model_version: str | None
    results: list[RankedItem]
    n_candidates: int
    store: str
    degraded: bool = Field(description="true when a feature source failed and the ranking used what was left")
    degraded_reasons: list[str]
    ce_wanted: int = Field(description="pairs the second phase asked the cross-encoder for")
    ce_scored: int = Field(description="of those, pairs scored before the deadline (cached ones included)")
    cold_route: str | None = Field(None, description="no candidate had any engagement: the model's cold scorer "
                                   "(e.g. 'feature:bienc_cos') ranked the request; null: the trees did")
    interleaved: bool = Field(False, description="true: team-draft interleaving of champion and challenger")
    challenger_version: str | None = Field(None, description="the challenger version of an interleaved request")
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


class ServiceState:
    """Everything a request needs, loaded before the port opens. `live` is the one mutable part: a reload
    replaces it whole, and a request reads it once."""

    def __init__(self, live: LiveModel, store: Any, catalog: pd.DataFrame, cfg: ServingConfig,
                 served_log: ServedLog | None) -> None:
        self.live, self.store, self.cfg, self.served_log = live, store, cfg, served_log
        self.gate = FifoGate(cfg.cpu_slots) if cfg.cpu_slots else None
        self.known = set(catalog["product_id"])
        self.watcher: ModelWatcher | None = None
        self.challenger: LiveModel | None = None  # interleaved with the champion on a share of requests
        self.challenger_watcher: ModelWatcher | None = None
        self.limits: RequestLimits | None = None
        self.metrics = ServiceMetrics(ce_cache=lambda: self.live.ondemand.ce_cache,  # the live model's, reloads too
                                      served_log=lambda: self.served_log, limits=lambda: self.limits)
        self.metrics.show_model(*_model_labels(live))
        self._swap_lock = threading.Lock()

    def swap(self, new: LiveModel, grace_s: float = 5.0) -> None:
        """Make `new` live; the old model keeps serving the requests that already hold it, then stops."""
        with self._swap_lock:
            old, self.live = self.live, new
            self.metrics.show_model(*_model_labels(new))
        _close_later(old, grace_s)

    def swap_challenger(self, new: LiveModel, grace_s: float = 5.0) -> None:
        with self._swap_lock:
            old, self.challenger = self.challenger, new
        _close_later(old, grace_s)

    def close(self) -> None:
        for w in (self.watcher, self.challenger_watcher):
            if w is not None:
                w.stop()
        self.live.close()
        if self.challenger is not None:
            self.challenger.close()
        if self.served_log is not None:
            self.served_log.close()


def _close_later(old: LiveModel | None, grace_s: float) -> None:
    if old is not None:
        timer = threading.Timer(grace_s, old.close)
        timer.daemon = True
        timer.start()


def _model_labels(live: LiveModel) -> tuple[str, str]:
    return live.model.name or live.model.uri, live.model.version or ""


def _checked_features_dir(features_dir: str | Path | None) -> Path | None:
    """Settings that are cheap to check are checked before the slow model and encoder loads."""
    fdir = Path(features_dir).resolve() if features_dir is not None else None
    if fdir is not None and not fdir.is_dir():
        raise ServingError(f"features_dir={features_dir} does not exist. Fix: pass the directory "
                           "build_features wrote, or leave it out to serve request-time features only.")
    return fdir


def _serving_config(serving: ServingConfig | dict | None, max_candidates: int | None) -> ServingConfig:
    from pydantic import ValidationError

    try:
        cfg = serving if isinstance(serving, ServingConfig) else ServingConfig(**(serving or {}))
        if max_candidates is not None:
            cfg = cfg.model_copy(update={"max_candidates": ServingConfig(max_candidates=max_candidates).max_candidates})
    except ValidationError as e:
        err = e.errors()[0]
        raise ServingError(f"serving setting {'.'.join(map(str, err['loc']))}: {err['msg']}. Fix: e.g. "
                           "max_candidates=1000 (see ltr/serving/config.py).") from None
    return cfg


def _open_store(store: Any, fdir: Path | None, features_cfg: Any) -> Any:
    """A given store wins (tests, a store shared by several apps); else the one build_features described."""
    if store is None and fdir is not None:
        from features.store import LtrStore
        return LtrStore(fdir, features_cfg)
    return store


def request_problem(query: str, ids: list[str], state: ServiceState) -> tuple[str, str] | None:
    """(field, message) of the first thing wrong with a request that pydantic's schema cannot see."""
    cfg = state.cfg
    if not query:
        return "query", "query is blank. Fix: send the shopper's search text."
    if not ids:
        return "product_ids", "product_ids is empty. Fix: send at least one candidate product id."
    if len(ids) > cfg.max_candidates:
        return "product_ids", (f"product_ids has {len(ids)} ids; the limit is {cfg.max_candidates}. "
                               "Fix: send fewer candidates (retrieve, then rank the top ones).")
    long_ids = [p for p in ids if len(p) > cfg.max_id_chars]
    if long_ids:
        return "product_ids", (f"{len(long_ids)} product id(s) are longer than {cfg.max_id_chars} characters, "
                               f"e.g. {long_ids[0][:40]!r}... Fix: send catalog product ids.")
    if len(set(ids)) != len(ids):
        dup = [p for p, c in pd.Series(ids).value_counts().items() if c > 1]
        return "product_ids", f"product_ids repeats {len(dup)} id(s), e.g. {dup[:5]}. Fix: send each candidate once."
    unknown = [p for p in ids if p not in state.known]
    if unknown:
        return "product_ids", (f"{len(unknown)} product id(s) are not in the catalog, e.g. {unknown[:5]}. "
                               "Fix: send ids of catalog products.")
    return None


class Served:
    """What a request answers: the order of its candidates, and per candidate the score and phase shown and,
    when interleaved, the arm (0 champion, 1 challenger) that placed it."""

    def __init__(self, r: Ranked, challenger: Ranked | None = None, seed: int = 0) -> None:
        self.champion, self.challenger, self.interleaved = r, challenger, challenger is not None
        if challenger is None:
            self.order, self.scores, self.phase, self.arm = r.order, r.scores, r.phase, None
            return
        self.order, team = team_draft(r.order, challenger.order, seed)
        self.arm = np.empty(len(team), np.int8)
        self.arm[self.order] = team
        pick = self.arm == 1
        self.scores = np.where(pick, challenger.scores, r.scores)
        self.phase = np.where(pick, challenger.phase, r.phase)

    def arms(self) -> np.ndarray | None:
        return None if self.arm is None else np.asarray(ARMS, dtype=object)[self.arm]

    def explanations(self, live: LiveModel, challenger: LiveModel | None, rows: np.ndarray) -> list[dict[str, Any]]:
        """For candidates `rows`, the explanation of the model whose score each shows."""
        from .explain import explain

        if self.arm is None:
            return explain(live, self.champion, rows)
        theirs = self.arm[rows] == 1
        out: list[dict[str, Any]] = [{}] * len(rows)
        for mask, lm, r in ((~theirs, live, self.champion), (theirs, challenger, self.challenger)):
            for n, e in zip(np.flatnonzero(mask), explain(lm, r, rows[mask])):
                out[n] = e
        return out


def _log_record(rid: str, q: str, ids: list[str], live: LiveModel, s: Served) -> dict[str, Any]:
    """The champion's features and scores (the log's feature list is one model's), the positions shown."""
    r = s.champion
    position = np.empty(len(ids), np.int32)
    position[s.order] = np.arange(1, len(ids) + 1)
    return {"request_id": rid, "ts": datetime.now(UTC), "query": q, "query_id": query_id(q), "product_ids": ids,
            "features": live.model.features, "X": r.X, "scores": r.scores, "phase": r.phase, "position": position,
            "model_version": live.version, "store": r.store, "cold_route": r.cold_route, "arm": s.arms()}


def _rank_one(state: ServiceState, live: LiveModel, q: str, ids: list[str], started: float) -> Ranked:
    with live.foreground():
        docs = live.ondemand.positions(ids)
        return rank_phases(live, q, ids, docs, state.cfg.rerank_k, started, state.cfg.ce_deadline_ms / 1000,
                           state.gate)


def _degraded_reasons(r: Ranked, live: LiveModel) -> list[str]:
    out = []
    if r.store == "error":
        out.append("online store unavailable: " + public(r.store_error or ""))
    if live.batcher is not None and r.ce_wanted and not r.ce_scored and live.batcher.stats["errors"]:
        out.append("cross-encoder failing")
    return out


def rank_request(state: ServiceState, req: RankRequest, started: float | None = None) -> dict[str, Any] | JSONResponse:
    """POST /v1/rank, as a plain function of the state so it can run (and be tested) without HTTP: the body of a
    RankResponse as plain values (built without a pydantic object per candidate, which cost ~0.4 ms of a ~5 ms
    request; the schema is still RankResponse's, tested), or the 422 problem."""
    started = time.monotonic() if started is None else started
    live = state.live  # once: a reload meanwhile does not mix versions within this request
    q, ids = req.query.strip(), [str(p) for p in req.product_ids]
    problem = request_problem(q, ids, state)
    if problem is not None:
        state.metrics.rejected()
        return _problem(*problem)
    rid = req.request_id or uuid.uuid4().hex
    challenger = state.challenger  # once, as `live`
    if challenger is not None and not in_share(rid, state.cfg.interleave_share):
        challenger = None
    try:
        r = _rank_one(state, live, q, ids, started)
        served = Served(r, None if challenger is None else _rank_one(state, challenger, q, ids, started),
                        request_seed(rid))
    except Exception:
        state.metrics.failed()
        raise
    top = served.order[: min(req.top_k or len(ids), len(ids))]
    arms = served.arms()
    results = [{"product_id": ids[i], "score": s, "rank": n, "phase": ph, "arm": None if arms is None else arms[i]}
               for n, (i, s, ph) in enumerate(zip(top.tolist(), served.scores[top].tolist(),
                                                  served.phase[top].tolist()), 1)]
    if req.explain:  # the results returned, not every candidate: TreeSHAP is the costly part
        for item, why in zip(results, served.explanations(live, challenger, top)):
            item["explain"] = why
    reasons = _degraded_reasons(r, live)
    if state.served_log is not None:
        state.served_log.put(_log_record(rid, q, ids, live, served))
    took = time.monotonic() - started
    state.metrics.served(took, len(ids), r.ce_scored, r.ce_wanted, r.store == "error", bool(reasons))
    return {"request_id": rid, "query_id": query_id(q), "model_version": live.version, "results": results,
            "n_candidates": len(ids), "store": r.store, "degraded": bool(reasons), "degraded_reasons": reasons,
            "ce_wanted": r.ce_wanted, "ce_scored": r.ce_scored, "cold_route": r.cold_route,
            "interleaved": served.interleaved,
            "challenger_version": challenger.version if challenger is not None else None,
            "took_ms": round(took * 1000, 3)}


def _store_health(store: Any) -> dict[str, Any]:
    """Probe with a real read: a store can be configured and still fail (tables never materialized, file gone)."""
    st: dict[str, Any] = {"configured": store is not None}
    if store is not None:
        st["views"] = list(getattr(store, "views", []))
        try:
            store.get_online_features("q_health_probe", ["__health_probe__"])
            st["ok"] = True
        except Exception as e:  # noqa: BLE001
            st["ok"], st["error"] = False, public(f"{type(e).__name__}: {e}")
    return st


def _public_model(live: LiveModel) -> dict[str, Any]:
    d = live.model.describe()
    d["cross_encoder"] = Path(d["cross_encoder"]).name if d.get("cross_encoder") else None
    d["ce_backend"] = live.ondemand.ce_backend if d["cross_encoder"] else None
    d["bi_encoder_queries"] = live.ondemand.bi_encoder_queries
    return d


def _challenger_health(state: ServiceState) -> dict[str, Any] | None:
    ch, watcher = state.challenger, state.challenger_watcher
    if ch is None:
        return None
    return {"model": _public_model(ch), "interleave_share": state.cfg.interleave_share,
            "reload": watcher.status() if watcher is not None else {"follows": None}}


def health_report(state: ServiceState) -> dict[str, Any]:
    """GET /health: the live version, where each feature comes from, and why the service is 'degraded' when
    it is (still serving: from request-time features, or the old model version). No server paths."""
    live = state.live
    st = _store_health(state.store)
    reasons = [] if st.get("ok", True) else ["online store: " + st["error"]]
    reload = state.watcher.status() if state.watcher is not None else {"follows": None}
    if reload.get("error"):
        reasons.append("reload: " + reload["error"])
    a, cache = live.assembler, live.ondemand.ce_cache
    log = state.served_log
    return {"status": "degraded" if reasons else "ok", "reasons": reasons, "model": _public_model(live),
            "challenger": _challenger_health(state), "reload": reload, "features": a.features,
            "feature_sources": a.sources, "missing_features": a.missing,
            "store": st, "n_products": len(state.known), "limits": state.cfg.model_dump(exclude={"log"}),
            "ce_cache": {"size": len(cache), "hits": cache.hits, "misses": cache.misses},
            "row_cache": {"size": len(a.row_cache), "hits": a.row_cache.hits, "misses": a.row_cache.misses},
            "ce_batcher": {**live.batcher.stats, **live.batcher.pending()} if live.batcher else None,
            "served_log": None if log is None else {"written_records": log.written_records, "parts": log.parts,
                                                    "dropped": log.dropped, "errors": log.errors}}


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
        out = rank_request(state, req)  # a body in RankResponse's schema, serialized here in one step
        if isinstance(out, Response):
            return out
        return Response(to_json(out, inf_nan_mode="null"), media_type="application/json")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return health_report(state)

    @app.get("/metrics")
    def prom() -> Response:
        body, ctype = state.metrics.render()
        return Response(content=body, media_type=ctype)


def build_app(state: ServiceState) -> FastAPI:
    """The HTTP layer over a loaded state, kept apart from loading so the routes can be served from any state."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()  # flush the served log, stop the watcher and the cross-encoder thread

    app = FastAPI(title="LTR ranking service", version="1", lifespan=lifespan)
    app.state.service = state
    _add_routes(app, state)
    app.add_middleware(RequestLimits, max_body_bytes=state.cfg.max_body_bytes, max_inflight=state.cfg.max_inflight,
                       on_reject=state.metrics.rejected, register=lambda lim: setattr(state, "limits", lim))
    return app


def create_app(model_uri: str, features_dir: str | Path | None = None,
               products: pd.DataFrame | str | Path | None = None, *, store: Any = None,
               features_cfg: Any = None, cross_encoder: str | Path | None = None,
               bi_encoder: str | Path | None = "default", max_candidates: int | None = None,
               log_dir: str | Path | None = None, tracking_uri: str | None = None,
               on_missing: Literal["error", "nan"] = "error", ce_cache_size: int = 100_000,
               warm: bool = True, precompute_embeddings: bool = True,
               embedding_cache: str | Path | None = "default",
               serving: ServingConfig | dict | None = None, challenger: str | None = None) -> FastAPI:
    """Build the ranking service.

    model_uri: 'models:/NAME@champion' (or any URI ltr.tracking.load_model takes; an alias is followed, see
    serving.reload_poll_s). features_dir: what features.build.build_features wrote (its online store is read
    with LtrStore); or pass `store` (an LtrStore). products: the catalog (frame, products.parquet or dataset
    dir; default: the dataset named in features_dir/manifest.json). cross_encoder: its dir (default: the one
    the model carries). bi_encoder: 'default' (all-MiniLM-L6-v2), a dir, or None. tracking_uri: default
    $MLFLOW_TRACKING_URI, else ltr.tracking.DEFAULT_TRACKING_URI. on_missing='error' refuses to start when a
    model feature has no source; 'nan' serves it as NaN. precompute_embeddings: have every catalog product's
    bi-encoder embedding in memory before the port opens, read from `embedding_cache` ('default': the
    machine's, where the offline build stored them; None: no disk cache) and computed only where absent, so
    a new query embeds only itself. serving: bounds, phases and reload (ltr.serving.config.ServingConfig);
    max_candidates overrides serving.max_candidates. challenger: a second model URI (e.g.
    'models:/NAME@challenger', followed like the champion) interleaved with it on `serving.interleave_share`
    of the requests; it must be servable from the same catalog, store and bi-encoder.
    """
    cfg = _serving_config(serving, max_candidates)
    fdir = _checked_features_dir(features_dir)
    lm = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
    tracking_uri = lm.tracking_uri  # reloads read the same registry, whatever the process default becomes
    check_bi_encoder(lm, bi_encoder)
    catalog = load_products(products, fdir)
    store = _open_store(store, fdir, features_cfg)
    if embedding_cache == "default":
        from ltr.data.embedding_cache import default_cache_dir
        embedding_cache = default_cache_dir()
    base = OnDemandFeatures(catalog, cross_encoder=None, bi_encoder=bi_encoder, ce_cache_size=ce_cache_size,
                            embedding_cache=embedding_cache, query_backend=cfg.query_backend)
    if warm:  # built once, shared by every model version this service loads
        base.warm([f for f in lm.features if family_of(f) != "ce"])
    if precompute_embeddings and "bienc_cos" in lm.features and bi_encoder is not None:
        base.precompute_product_embeddings(progress=True)

    def scorer_for(m: LoadedModel) -> OnDemandFeatures:  # each version's cross-encoder, on its own backend
        return base.with_cross_encoder(m.cross_encoder, serving_ce_backend(cfg.ce_backend, m.cross_encoder))

    live = build_live(lm, scorer_for(lm), store, cfg, on_missing, warm)
    state = ServiceState(live, store, catalog, cfg, ServedLog(log_dir, cfg.log) if log_dir is not None else None)

    def load_version() -> LiveModel:
        new = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
        check_bi_encoder(new, bi_encoder)
        return build_live(new, scorer_for(new), store, cfg, on_missing, warm)

    state.watcher = ModelWatcher(lm, load_version, state.swap, cfg.reload_poll_s)
    if challenger is not None:
        def load_challenger() -> LiveModel:
            new = load_ranker(challenger, cross_encoder=None, tracking_uri=tracking_uri)
            check_bi_encoder(new, bi_encoder)
            if precompute_embeddings and "bienc_cos" in new.features and bi_encoder is not None:
                base.precompute_product_embeddings(progress=False)  # a no-op when the champion did it
            return build_live(new, scorer_for(new), store, cfg, on_missing, warm)

        state.challenger = load_challenger()
        state.challenger_watcher = ModelWatcher(state.challenger.model, load_challenger, state.swap_challenger,
                                                cfg.reload_poll_s)
    return build_app(state)


__all__ = ["RankRequest", "RankResponse", "ServiceState", "build_app", "create_app", "health_report",
           "load_products", "public", "rank_request", "request_problem"]
