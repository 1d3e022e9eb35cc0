"""Why a product ranks where it does: each served score taken apart into its features' exact contributions.

The trees' contributions are XGBoost's (or LightGBM's) TreeSHAP `pred_contribs` of the very matrix row that
produced the served score, in the phase that scored it: the first phase's rows with `ce_score` missing, the
second phase's with the cross-encoder's score filled in. So bias + the contributions = the served score (to
float32 rounding), which a person can check and the tests do.

A request ranked by the model's cold route (`ltr.cold_route`: no candidate has engagement) is explained by
the route's own arithmetic, exactly: a content model's contributions (scaled into the request's z-score for
a blend), and the route feature's z-score share, computed over the same rows the route scored together.

Contributions are grouped by what they measure, so a person can see the balance the issue is about:
engagement (`eng_*`: what shoppers did), product (`prod_*`: price, rating, text lengths) and content
(everything that compares the query with the product: lexical match, cross- and bi-encoder).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from features.ondemand import CE_FEATURE

from .live import LiveModel
from .phases import Ranked

GROUPS = ("content", "engagement", "product")


def feature_group(name: str) -> str:
    if name.startswith("eng_"):
        return "engagement"
    return "product" if name.startswith("prod_") else "content"


def _route_contributions(route: Any, X: np.ndarray, scores: np.ndarray, rows: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(contributions (len(rows), features), bias) of a cold route for `rows` of the matrix X it scored
    together (its z-scores are over all of X; the attributions are computed for `rows` only)."""
    feats = route.features_
    out = np.zeros((len(rows), len(feats)))
    bias = np.zeros(len(rows))
    s = route.scorer_
    if route.content_model_ is not None:
        cols = [feats.index(f) for f in route.content_model_.feature_names_]
        c = route.content_model_.predict_contributions(X[np.ix_(rows, cols)])
        if s.kind == "content_only":
            out[:, cols], bias = c[:, :-1], c[:, -1]
        else:  # blend: z(content) over all of X, as the route computed it
            total = route.content_model_.predict_matrix(X[:, cols])
            sd = total.std()
            if np.isfinite(sd) and sd > 0:
                out[:, cols], bias = c[:, :-1] / sd, (c[:, -1] - total.mean()) / sd
    if s.feature is not None:  # the route feature's share: the rest of the score, whatever its z-score was
        out[:, feats.index(s.feature)] += scores[rows] - out.sum(axis=1) - bias  # on top of its content share
    return out, bias


def _contributions(live: LiveModel, r: Ranked, route: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For candidates `rows`, the contributions and bias of the phase that gave each its score."""
    if route is None:  # trees score rows one by one: the served matrix row is the row that was scored
        c = live.model.ranker.predict_contributions(r.X[rows])
        return c[:, :-1], c[:, -1]
    first = r.X.copy()
    if live.ce_col is not None:
        first[:, live.ce_col] = np.nan  # the first phase saw every candidate without the cross-encoder
    out, bias = np.zeros((len(rows), r.X.shape[1])), np.zeros(len(rows))
    p2 = np.flatnonzero(r.phase == 2)
    where1 = np.flatnonzero(r.phase[rows] == 1)
    if len(where1):  # the first phase z-scored all candidates together
        out[where1], bias[where1] = _route_contributions(route, first, route.predict_matrix(first), rows[where1])
    where2 = np.flatnonzero(r.phase[rows] == 2)
    if len(where2):  # the final phase re-scored the cross-encoder's rows together
        at = np.searchsorted(p2, rows[where2])
        out[where2], bias[where2] = _route_contributions(route, r.X[p2], r.scores[p2], at)
    return out, bias


def explain(live: LiveModel, r: Ranked, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One explanation per candidate in `rows` (default: every candidate, in the request's order). TreeSHAP
    costs ~0.2-0.4 ms a row on one core, so a response explains the results it returns, not every candidate."""
    rows = np.arange(len(r.X)) if rows is None else np.asarray(rows, dtype=np.int64)
    route = live.model.cold_route if r.cold_route is not None else None
    contrib, bias = _contributions(live, r, route, rows)
    feats = live.model.features
    group_of = np.array([GROUPS.index(feature_group(f)) for f in feats])
    scorer = "trees" if route is None else f"cold_route:{r.cold_route}"
    out = []
    for n, i in enumerate(rows.tolist()):
        c = contrib[n]
        groups = {g: float(c[group_of == k].sum()) for k, g in enumerate(GROUPS)}
        mass = float(np.abs(c).sum())
        out.append({
            "features": {f: (None if np.isnan(v) else float(v)) for f, v in zip(feats, r.X[i].tolist())},
            "contributions": dict(zip(feats, c.tolist())),
            "bias": float(bias[n]), "margin": float(bias[n] + c.sum()), "scorer": scorer, "groups": groups,
            "content_share": abs(groups["content"]) / mass if mass else 0.0,
            "engagement_share": abs(groups["engagement"]) / mass if mass else 0.0,
            "cross_encoder": bool(r.phase[i] == 2 and CE_FEATURE in feats)})
    return out


def table_lines(body: dict[str, Any], titles: dict[str, str], top_features: int = 3) -> list[str]:
    """`ltr explain`'s table: per result its score taken apart by group, and its largest contributions."""
    lines = [f"{body['query_id']}  model v{body['model_version']}  {body['n_candidates']} candidates"
             + (f"  cold route {body['cold_route']}" if body.get("cold_route") else ""),
             f"{'rank':>4} {'product':<12} {'title':<34} {'score':>8} {'ph':>2} {'bias':>7} "
             f"{'content':>8} {'engage':>8} {'product':>8}  largest contributions"]
    for r in body["results"]:
        e = r["explain"]
        big = sorted(e["contributions"].items(), key=lambda kv: -abs(kv[1]))[:top_features]
        title = (titles.get(r["product_id"]) or "")[:34]
        g = e["groups"]
        lines.append(f"{r['rank']:>4} {r['product_id']:<12} {title:<34} {r['score']:>8.4f} {r['phase']:>2} "
                     f"{e['bias']:>7.3f} {g['content']:>8.4f} {g['engagement']:>8.4f} {g['product']:>8.4f}  "
                     + ", ".join(f"{f} {v:+.3f}" for f, v in big))
    return lines


__all__ = ["GROUPS", "explain", "feature_group", "table_lines"]
