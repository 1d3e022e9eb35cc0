"""Two rankings of one query, each result taken apart, for a person to compare.

The models rank through the service's own phases (ltr/serving/phases.py) and are explained by
ltr/serving/explain.py, on the live objects the service holds, so what the page shows is what a shopper
would be served. But not through `rank_request`: a workbench view is not a shopper's search, so it goes
to neither the served-feature log (it would become training data once joined with clicks) nor the
request metrics, and it is never interleaved.

The zero-shot baselines (bi-encoder, BM25) order the same candidates by the champion's served value of
that one feature (`bienc_cos`, `lex_bm25_title`), so the comparison is on identical inputs.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ltr.data.metrics import ESCI_GAINS
from ltr.serving.explain import explain
from ltr.serving.phases import rank as rank_phases

BASELINES = {"bienc": "bienc_cos", "bm25": "lex_bm25_title"}
RIGHTS = ("challenger", *BASELINES)
TOP_BARS = 5  # contributions drawn as bars; the rest are summed into one, so the bars add up to the score


def rank_model(state: Any, live: Any, query: str, ids: list[str]) -> list[dict[str, Any]]:
    """Per candidate in served order: id, score, phase, explanation."""
    cfg = state.cfg
    with live.foreground():
        docs = live.ondemand.positions(ids)
        r = rank_phases(live, query, ids, docs, cfg.rerank_k, time.monotonic(), cfg.ce_deadline_ms / 1000,
                        state.gate)
    why = explain(live, r)
    return [{"product_id": ids[i], "score": float(r.scores[i]), "phase": int(r.phase[i]), "explain": why[i]}
            for i in r.order.tolist()]


def rank_by_feature(left: list[dict[str, Any]], feature: str) -> list[dict[str, Any]] | None:
    """The candidates ordered by one served feature (missing last, ties by id); None if it is not served."""
    if not left or feature not in left[0]["explain"]["features"]:
        return None
    vals = [r["explain"]["features"][feature] for r in left]
    key = np.array([-np.inf if v is None else v for v in vals], float)
    ids = np.array([r["product_id"] for r in left])
    order = np.lexsort((ids, -key))
    return [{"product_id": left[i]["product_id"], "score": None if vals[i] is None else float(vals[i]),
             "phase": None, "explain": None} for i in order.tolist()]


def bars(e: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The largest contributions by size, then the rest as one bar."""
    if not e:
        return []
    items = sorted(e["contributions"].items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    out = [{"name": k, "value": v, "feature_value": e["features"].get(k)} for k, v in items[:TOP_BARS]]
    rest = items[TOP_BARS:]
    if rest:
        out.append({"name": f"{len(rest)} other features", "value": float(sum(v for _, v in rest)),
                    "feature_value": None})
    return out


def ndcg10(order: list[str], grades: dict[str, int]) -> float | None:
    """NDCG@10 of an order against human grades, as ltr.data.metrics.ndcg_per_query computes it (ESCI gains,
    the ideal over the order's judged items; tested equal), without a pandas frame per call: the query
    lists compute it for every judged query on a page view after a correction."""
    g = np.array([ESCI_GAINS.get(grades.get(p, -1), 0.0) for p in order])
    if not any(p in grades for p in order):
        return None
    disc = 1.0 / np.log2(np.arange(2, min(len(g), 10) + 2))
    ideal = float((np.sort(g)[::-1][:10] * disc).sum())
    return None if ideal <= 0 else round(float((g[:10] * disc).sum()) / ideal, 4)


def moves(left: list[str], right: list[str]) -> dict[str, int | None]:
    """Per product on the right: its left rank minus its right rank (+: the right ranks it higher)."""
    pos = {p: n for n, p in enumerate(left, 1)}
    return {p: (pos[p] - n if p in pos else None) for n, p in enumerate(right, 1)}


__all__ = ["BASELINES", "RIGHTS", "TOP_BARS", "bars", "moves", "ndcg10", "rank_by_feature", "rank_model"]
