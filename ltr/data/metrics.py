"""Ranking metrics: content (NDCG with ESCI / exponential gains, Irrelevant@k) and engagement on held-out
sessions (purchase / add-to-cart recall@k, expected clicks under a position-based click model, an
ATC@k-style hit rate), each per query, then averaged overall and per head/tail segment.

Ties are broken deterministically: score descending, then the tie-break key ascending (product_id by
default). A constant scorer therefore ranks by product id, never by the label, so ties cannot leak the
answer into the metric.

Conventions (stated once, used everywhere):
- NDCG@k: DCG = sum gain(grade_i) / log2(i + 1) over the top k; the ideal DCG sorts all judged items of
  the query by gain. Unjudged items (grade NaN) gain 0.
- Queries with nothing relevant (ideal DCG 0) get NaN, and every mean and paired test here skips NaN, so
  they are left out. Why: such a query has no ranking to get right; scoring it 0 (trec_eval, scikit-learn)
  or 1 (XGBoost's ndcg@k) would move the mean with the share of such queries, not with ranking quality.
  Every NDCG the project reports follows it, so its figures differ from those tools on such queries only.
- Irrelevant@k: share of grade-0 items among the *judged* items in the top k.
- recall@k: held-out events (purchases or carts, counts) of the top-k items / all held-out events of the
  query; queries without events are left out.
- expected_clicks@k: sum over the top k of theta_i * a(d), theta_i = 1 / i**eta (PBM examination) and
  a(d) the per-pair click propensity (attractiveness).
- atc_rate@k: share of queries with held-out add-to-carts that have at least one carted item in the top k
  (the "ATC@40" style rate: did the shopper's basket item make it onto the first pages).
- paired tests (`paired_test`): two rankers compared on the queries both define, two-sided.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .engagement import smoothed_rate
from .schemas import FrameColumns

ESCI_GAINS: dict[int, float] = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}
ENGAGEMENT_METRICS = ("purchase_recall", "cart_recall", "expected_clicks", "atc_rate")
CONTENT_METRICS = ("ndcg", "ndcg_exp", "irrelevant")


class MetricError(ValueError):
    """Bad input to a metric; the message names the field and the fix."""


def _codes(values: Sequence | np.ndarray | pd.Series) -> np.ndarray:
    return pd.factorize(pd.Series(np.asarray(values)), sort=True)[0]


def _check(qid, score, *others: tuple[str, object]) -> tuple[np.ndarray, np.ndarray]:
    qid = np.asarray(qid)
    score = np.asarray(score, dtype="float64")
    if qid.ndim != 1 or score.shape != qid.shape:
        raise MetricError(f"qid and score must be 1-D and the same length, got {qid.shape} and {score.shape}. "
                          "Fix: pass one score per row.")
    if not np.isfinite(score).all():
        raise MetricError(f"score has {int((~np.isfinite(score)).sum())} NaN/inf value(s). Fix: the model must "
                          "score every row with a finite number.")
    for name, arr in others:
        if arr is not None and len(np.asarray(arr)) != len(qid):
            raise MetricError(f"{name} has {len(np.asarray(arr))} rows but qid has {len(qid)}. Fix: align them.")
    return qid, score


def rank_order(qid, score, tiebreak=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order sorted by (query, score desc, tiebreak asc); returns (order, query codes, 1-based ranks)."""
    qid, score = _check(qid, score, ("tiebreak", tiebreak))
    n = len(qid)
    q = _codes(qid)
    tb = _codes(tiebreak) if tiebreak is not None else np.arange(n)
    order = np.lexsort((tb, -score, q))
    qs = q[order]
    starts = np.r_[0, np.flatnonzero(np.diff(qs)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks_sorted = np.arange(n) - first + 1
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = ranks_sorted
    return order, q, ranks


def ranks(qid, score, tiebreak=None) -> np.ndarray:
    """1-based rank of every row within its query (see module docstring for ties)."""
    return rank_order(qid, score, tiebreak)[2]


def _gain(grade: np.ndarray, gains: str | Mapping[int, float]) -> np.ndarray:
    g = np.asarray(grade, dtype="float64")
    known = g[~np.isnan(g)]
    if len(known) and ((known < 0).any() or (known != np.round(known)).any()):
        raise MetricError("grade must hold whole numbers 0..3 (ESCI I/C/S/E = 0/1/2/3). Fix: map labels to grades.")
    if gains == "exp":
        out = np.power(2.0, g) - 1.0
    elif gains == "esci":
        if len(known) and (known > 3).any():
            raise MetricError("grade above 3 with ESCI gains. Fix: grades are 0..3.")
        lut = np.array([ESCI_GAINS[i] for i in range(4)])
        out = np.where(np.isnan(g), 0.0, lut[np.nan_to_num(g, nan=0).astype(int).clip(0, 3)])
    elif isinstance(gains, Mapping):
        out = np.array([gains.get(int(x), 0.0) if not np.isnan(x) else 0.0 for x in g])
    else:
        raise MetricError(f"gains={gains!r} unknown. Fix: use 'esci', 'exp' or a {{grade: gain}} mapping.")
    return np.nan_to_num(out, nan=0.0)


def _per_query(q: np.ndarray, values: np.ndarray, mask: np.ndarray, nq: int) -> np.ndarray:
    return np.bincount(q[mask], weights=values[mask], minlength=nq)


def _index(qid) -> pd.Index:
    return pd.Index(pd.unique(pd.Series(np.asarray(qid))).tolist()).sort_values()


def ndcg_per_query(qid, score, grade, k: int = 10, gains: str | Mapping[int, float] = "esci",
                   tiebreak=None) -> pd.Series:
    """NDCG@k of every query (NaN where the ideal DCG is 0)."""
    _, q, r = rank_order(qid, score, tiebreak)
    g = _gain(np.asarray(grade), gains)
    nq = q.max() + 1 if len(q) else 0
    disc = 1.0 / np.log2(r + 1.0)
    dcg = _per_query(q, g * disc, r <= k, nq)
    # ideal: rank by gain itself
    _, _, ir = rank_order(qid, g, None)
    idcg = _per_query(q, g / np.log2(ir + 1.0), ir <= k, nq)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)
    return pd.Series(v, index=_index(qid), name=f"ndcg@{k}")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per query, NaN where den is 0 (a query with nothing to measure is not a zero)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def irrelevant_per_query(qid, score, grade, k: int = 10, tiebreak=None) -> pd.Series:
    """Share of grade-0 items among judged items in the top k (NaN if none judged)."""
    _, q, r = rank_order(qid, score, tiebreak)
    g = np.asarray(grade, dtype="float64")
    nq = q.max() + 1 if len(q) else 0
    top = (r <= k) & ~np.isnan(g)
    n_judged = _per_query(q, np.ones(len(q)), top, nq)
    n_irr = _per_query(q, (g == 0).astype(float), top, nq)
    v = _ratio(n_irr, n_judged)
    return pd.Series(v, index=_index(qid), name=f"irrelevant@{k}")


def recall_per_query(qid, score, events, k: int = 10, tiebreak=None) -> pd.Series:
    """Held-out events (counts) captured in the top k / all events of the query (NaN without events)."""
    _, q, r = rank_order(qid, score, tiebreak)
    e = np.nan_to_num(np.asarray(events, dtype="float64"), nan=0.0)
    if (e < 0).any():
        raise MetricError("event counts must be >= 0. Fix: pass held-out counts per pair.")
    nq = q.max() + 1 if len(q) else 0
    tot = _per_query(q, e, np.ones(len(q), bool), nq)
    hit = _per_query(q, e, r <= k, nq)
    v = _ratio(hit, tot)
    return pd.Series(v, index=_index(qid), name=f"recall@{k}")


def hit_rate_per_query(qid, score, events, k: int = 40, tiebreak=None) -> pd.Series:
    """1 if any item with held-out events is in the top k, 0 if none is, NaN for queries without events."""
    _, q, r = rank_order(qid, score, tiebreak)
    e = np.nan_to_num(np.asarray(events, dtype="float64"), nan=0.0)
    nq = q.max() + 1 if len(q) else 0
    tot = _per_query(q, (e > 0).astype(float), np.ones(len(q), bool), nq)
    hit = _per_query(q, (e > 0).astype(float), r <= k, nq)
    v = np.where(tot > 0, (hit > 0).astype(float), np.nan)
    return pd.Series(v, index=_index(qid), name=f"atc_rate@{k}")


def position_propensity(rank: np.ndarray, eta: float = 1.0) -> np.ndarray:
    """PBM examination probability theta_i = 1 / i**eta."""
    return 1.0 / np.power(np.asarray(rank, dtype="float64"), eta)


def expected_clicks_per_query(qid, score, propensity, k: int = 10, eta: float = 1.0,
                              tiebreak=None) -> pd.Series:
    """Expected clicks in the top k under a PBM: sum theta(rank) * attractiveness."""
    _, q, r = rank_order(qid, score, tiebreak)
    a = np.asarray(propensity, dtype="float64")
    if np.isnan(a).any() or (a < 0).any() or (a > 1).any():
        raise MetricError("click propensity must be in [0,1] with no NaN. Fix: pass per-pair attractiveness.")
    nq = q.max() + 1 if len(q) else 0
    v = _per_query(q, position_propensity(r, eta) * a, r <= k, nq)
    return pd.Series(v, index=_index(qid), name=f"expected_clicks@{k}")


def estimate_propensity(clicks, impressions, smoothing: float = 20.0) -> np.ndarray:
    """Stand-in attractiveness when none is given: the project's smoothed CTR (shrunk toward the global
    CTR, as features and labels shrink it), clipped to [0, 1] because a PBM needs a probability and
    counts from a dirty log (clicks > impressions) could push the rate above 1."""
    c = np.nan_to_num(np.asarray(clicks, dtype="float64"))
    n = np.nan_to_num(np.asarray(impressions, dtype="float64"))
    return np.clip(smoothed_rate(c, n, smoothing), 0.0, 1.0)


def query_segments(frame: pd.DataFrame, cols=None, head_quantile: float = 0.8) -> pd.Series:
    """head/tail per query: the frame's segment column if present, else by training impression volume."""
    cols = cols or FrameColumns()
    if cols.segment in frame.columns:
        s = frame.groupby(cols.query_id, sort=True)[cols.segment].first().astype(str)
        return s.rename("segment")
    if cols.impressions in frame.columns:
        vol = frame.groupby(cols.query_id, sort=True)[cols.impressions].sum()
    elif cols.heldout_impressions in frame.columns:
        vol = frame.groupby(cols.query_id, sort=True)[cols.heldout_impressions].sum()
    else:
        return pd.Series(dtype=str, name="segment")
    cut = vol.quantile(head_quantile)
    return pd.Series(np.where(vol > cut, "head", "tail"), index=vol.index, name="segment")


def _parse(metric: str) -> tuple[str, int]:
    if "@" not in metric:
        raise MetricError(f"metric {metric!r} has no cut-off. Fix: write it as NAME@K, e.g. cart_recall@10.")
    name, k = metric.split("@", 1)
    if name not in ENGAGEMENT_METRICS + CONTENT_METRICS or not k.isdigit() or int(k) < 1:
        raise MetricError(f"metric {metric!r} unknown. Fix: NAME@K with NAME in "
                          f"{ENGAGEMENT_METRICS + CONTENT_METRICS}.")
    return name, int(k)


def per_query_metrics(frame: pd.DataFrame, scores, cols=None, k: int = 10,
                      metrics: Sequence[str] = ("purchase_recall@10", "cart_recall@10", "expected_clicks@10",
                                                "atc_rate@40"),
                      head_quantile: float = 0.8, eta: float = 1.0) -> pd.DataFrame:
    """One row per query: content metrics at k (when grades exist) and the requested engagement metrics
    (when the held-out columns exist), plus the query's segment."""
    cols = cols or FrameColumns()
    for c in (cols.query_id, cols.product_id):
        if c not in frame.columns:
            raise MetricError(f"frame lacks column '{c}'. Fix: pass a frame with query and product ids.")
    scores = np.asarray(scores, dtype="float64")
    if len(scores) != len(frame):
        raise MetricError(f"{len(scores)} scores for {len(frame)} rows. Fix: score every row of the frame.")
    qid, tb = frame[cols.query_id].to_numpy(), frame[cols.product_id].to_numpy()
    out: dict[str, pd.Series] = {}
    if cols.grade in frame.columns:
        g = frame[cols.grade].to_numpy(dtype="float64")
        out[f"ndcg@{k}"] = ndcg_per_query(qid, scores, g, k, "esci", tb)
        out[f"ndcg_exp@{k}"] = ndcg_per_query(qid, scores, g, k, "exp", tb)
        out[f"irrelevant@{k}"] = irrelevant_per_query(qid, scores, g, k, tb)
    for m in metrics:
        name, mk = _parse(m)
        if name in CONTENT_METRICS:
            if cols.grade not in frame.columns:
                continue
            g = frame[cols.grade].to_numpy(dtype="float64")
            out[m] = (irrelevant_per_query(qid, scores, g, mk, tb) if name == "irrelevant" else
                      ndcg_per_query(qid, scores, g, mk, "esci" if name == "ndcg" else "exp", tb))
        elif name in ("purchase_recall", "cart_recall"):
            c = cols.heldout_purchases if name == "purchase_recall" else cols.heldout_carts
            if c in frame.columns:
                out[m] = recall_per_query(qid, scores, frame[c].to_numpy(), mk, tb)
        elif name == "atc_rate":
            if cols.heldout_carts in frame.columns:
                out[m] = hit_rate_per_query(qid, scores, frame[cols.heldout_carts].to_numpy(), mk, tb)
        elif name == "expected_clicks":
            if cols.click_propensity in frame.columns:
                a = frame[cols.click_propensity].to_numpy(dtype="float64")
            elif cols.heldout_clicks in frame.columns and cols.heldout_impressions in frame.columns:
                a = estimate_propensity(frame[cols.heldout_clicks], frame[cols.heldout_impressions])
            else:
                continue
            out[m] = expected_clicks_per_query(qid, scores, a, mk, eta, tb)
    res = pd.DataFrame({name: s.to_numpy() for name, s in out.items()}, index=_index(qid))
    res.index.name = cols.query_id
    seg = query_segments(frame, cols, head_quantile)
    if len(seg):
        res["segment"] = seg.reindex(res.index).to_numpy()
    return res


def summarize(per_query: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over queries where it is defined, overall and as 'metric/segment'."""
    out: dict[str, float] = {}
    num = [c for c in per_query.columns if c != "segment"]
    for c in num:
        out[c] = float(per_query[c].mean()) if per_query[c].notna().any() else float("nan")
    if "segment" in per_query.columns:
        for seg, part in per_query.groupby("segment", sort=True):
            for c in num:
                out[f"{c}/{seg}"] = float(part[c].mean()) if part[c].notna().any() else float("nan")
    out["n_queries"] = float(len(per_query))
    return out


def evaluate(frame: pd.DataFrame, scores, cols=None, k: int = 10,
             metrics: Sequence[str] = ("purchase_recall@10", "cart_recall@10", "expected_clicks@10", "atc_rate@40"),
             head_quantile: float = 0.8) -> dict[str, float]:
    """Summary metrics of `scores` on `frame` (see per_query_metrics / summarize)."""
    return summarize(per_query_metrics(frame, scores, cols, k, metrics, head_quantile))


def default_metrics(engagement_metric: str) -> tuple[str, ...]:
    base = ("purchase_recall@10", "cart_recall@10", "expected_clicks@10", "atc_rate@40")
    return base if engagement_metric in base else base + (engagement_metric,)


def paired_test(values: pd.Series, baseline: pd.Series) -> dict[str, float]:
    """Two-sided paired t-test and Wilcoxon signed-rank test of per-query `values` against `baseline`,
    over the index labels (queries, or (seed, query) pairs) where both are defined.

    Why paired: queries differ in difficulty far more than two rankers differ on one query; pairing takes
    that out. Why both tests, from scipy.stats: the t-test is about the mean difference, which is what the
    reported means compare, and on IR metrics it agrees with the randomization test (Smucker et al., CIKM
    2007); Wilcoxon is the check that does not lean on normality of bounded, spiky NDCG differences, but it
    drops zero differences (queries both rank alike), so it answers a slightly different question.
    Where every difference is 0 both p are 1 (no evidence of any difference; scipy's t statistic would be
    0/0); with fewer than 2 pairs they are NaN.
    """
    both = pd.concat([values.rename("a"), baseline.rename("b")], axis=1, join="inner").dropna()
    a, b = both["a"].to_numpy(dtype="float64"), both["b"].to_numpy(dtype="float64")
    d = a - b
    out = {"n_queries": len(d), "mean_diff": float(d.mean()) if len(d) else float("nan"),
           "p_ttest": float("nan"), "p_wilcoxon": float("nan")}
    if len(d) < 2:
        return out
    if not d.any():
        return {**out, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    from scipy import stats

    with warnings.catch_warnings():  # near-constant differences: scipy warns, its answer (p ~ 0) stands
        warnings.simplefilter("ignore", RuntimeWarning)
        out["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
        out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return out


def paired_bootstrap(values: pd.Series, baseline: pd.Series, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of `values - baseline` over the index labels both define, with a 95% percentile bootstrap CI that
    resamples those queries: the interval a claim "beats the baseline" must clear (its lower end above 0)."""
    both = pd.concat([values.rename("a"), baseline.rename("b")], axis=1, join="inner").dropna()
    d = (both["a"] - both["b"]).to_numpy(dtype="float64")
    if len(d) < 2:
        return {"diff": float(d.mean()) if len(d) else float("nan"), "ci95": [float("nan")] * 2,
                "n_queries": len(d), "excludes_0": False}
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "n_queries": len(d),
            "excludes_0": bool(lo > 0 or hi < 0)}


def nan_to_none(o: Any) -> Any:
    """NaN/inf -> None, through dicts and lists. Why: NaN is how a metric says "undefined here" (see the
    rule above), and strict JSON has no NaN; null says the same and any parser reads it."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list):
        return [nan_to_none(v) for v in o]
    return o
