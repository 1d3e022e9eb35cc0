"""Phased ranking under a latency budget (Vespa's first / second / global phases, on one model).

  first phase   every candidate, cheap features: the model with the cross-encoder's `ce_score` missing
                (the trees' default branches), from the online store and request-time features;
  second phase  the cross-encoder on the first phase's top `rerank_k` only, cached pairs free, the rest
                batched with other requests' pairs and cut off at the request's deadline;
  final phase   the model with `ce_score` re-scores the pairs the cross-encoder reached and puts them
                first, in its order; the others follow in first-phase order (their ce_score stays missing).

Why one model and not a separate first-phase model: every registered champion can be served phased as it
is, and a first phase that is the same model without one feature orders candidates the way the final phase
would have, minus that feature. The response says how many pairs the cross-encoder was asked for and how
many it scored in time; `bench/bench_serving.py` measures the NDCG cost against scoring every pair.

A request none of whose candidates has any engagement in the online store is ranked by the model's cold
route instead of the trees (`ltr.cold_route`, chosen at training time), through the same phases: the route
scores the first phase (the trees' order breaks its ties and picks what the cross-encoder sees), the
cross-encoder runs only if the route's scorer uses `ce_score`, and the response names the route.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from features.ondemand import CE_FEATURE

from .live import LiveModel


@dataclass
class Ranked:
    order: np.ndarray      # candidate positions, best first
    scores: np.ndarray     # per candidate: the score of the last phase that scored it
    phase: np.ndarray      # per candidate: 2 = re-scored with the cross-encoder, 1 = first phase only
    X: np.ndarray          # the feature values the scores came from (logged)
    store: str             # ok | error | none
    store_error: str | None
    ce_wanted: int         # pairs sent to the second phase
    ce_scored: int         # of those, pairs with a cross-encoder score in time (cached ones included)
    cold_route: str | None = None  # the cold scorer that ranked this request (no engagement at all), else None


def _second_phase(live: LiveModel, query: str, docs: np.ndarray, top: np.ndarray, stored: np.ndarray,
                  deadline: float) -> np.ndarray:
    """ce_score of the `top` candidates: the online store's (cross-fitted offline) where it has one, cached
    ones next, the rest from the batcher until the deadline."""
    vals, texts = live.ondemand.ce_lookup(query, docs[top])
    vals = np.where(np.isfinite(stored), stored, vals)
    todo = np.flatnonzero(np.isnan(vals))
    if len(todo) and live.batcher is not None and not live.closed.is_set():
        job = live.batcher.submit([query] * len(todo), [texts[i] for i in todo], deadline,
                                  tag=(query, docs[top][todo]))
        vals[todo] = live.batcher.wait(job)
    return vals


def _first_phase(live: LiveModel, query: str, ids: list[str], docs: np.ndarray) -> tuple:
    """(X, store info, the store's ce_score, the trees' scores, the cold route or None, the first-phase scores)."""
    X, info = live.assembler.matrix(query, ids, docs, skip=("ce",))
    stored = None
    if live.ce_col is not None:  # the store may hold ce_score for known pairs: kept for the second phase
        stored = X[:, live.ce_col].copy()
        X[:, live.ce_col] = np.nan  # the first phase sees every candidate the same way
    s1 = live.model.ranker.predict_matrix(X)
    route = live.cold_route(X)  # no engagement anywhere: the model's cold scorer ranks, the trees break ties
    return X, info, stored, s1, route, (s1 if route is None else route.predict_matrix(X))


def rank(live: LiveModel, query: str, ids: list[str], docs: np.ndarray, rerank_k: int,
         started: float, deadline_s: float, gate: AbstractContextManager | None = None) -> Ranked:
    """All three phases for one request. `started`: time.monotonic() at the request's arrival. `gate`: held
    around the first phase only (ltr/serving/gate.py), not while the cross-encoder works."""
    with gate or nullcontext():
        X, info, stored, s1, route, first = _first_phase(live, query, ids, docs)
    scorer = live.model.ranker if route is None else route
    phase = np.ones(len(ids), np.int8)
    wanted = scored = 0
    scores = first
    if live.ce_col is not None and rerank_k > 0 and (route is None or route.uses(CE_FEATURE)):
        top = np.lexsort((np.asarray(ids), -s1, -first))[:rerank_k]
        ce = _second_phase(live, query, docs, top, stored[top], started + deadline_s)
        X[top, live.ce_col] = ce
        hit = top[np.isfinite(ce)]
        wanted, scored = len(top), len(hit)
        if len(hit):
            scores = first.copy()
            scores[hit] = scorer.predict_matrix(X[hit])
            phase[hit] = 2
    ties = (np.asarray(ids),) if route is None else (np.asarray(ids), -s1)
    order = np.lexsort((*ties, -scores, -phase))  # phase 2 first; ties by id, stable on replicas
    return Ranked(order=order, scores=scores, phase=phase, X=X, store=info["store"],
                  store_error=info.get("store_error"), ce_wanted=wanted, ce_scored=scored,
                  cold_route=None if route is None else route.scorer_.name)


def rank_full(live: LiveModel, query: str, ids: list[str], docs: np.ndarray) -> np.ndarray:
    """Reference for the benchmark: every pair scored with the cross-encoder, no deadline."""
    X, _ = live.assembler.matrix(query, ids, docs)
    route = live.cold_route(X)
    return (live.model.ranker if route is None else route).predict_matrix(X)


__all__ = ["CE_FEATURE", "Ranked", "rank", "rank_full"]
