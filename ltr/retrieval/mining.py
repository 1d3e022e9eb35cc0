"""Difficulty levels from retriever agreement, and a labelling budget spread over them.

Why these levels (Walmart's sponsored-search recipe, made label-free): a pair every retriever puts on
the first page is almost surely relevant, and one nobody does is almost surely not; both are cheap
anchors ("easy"). The informative pairs are where retrievers disagree. A pair only BM25 ranks at the top
shares the query's exact words (a model number, a brand, a rare term) that the embedding space blurred:
usually relevant and exactly what a semantic model misses (hard positive). A pair only one non-lexical
retriever ranks at the top is that model's confident guess against the others' evidence, typically
topical similarity without the asked-for product ("iphone case" for "iphone"), or for the champion a
popular item: the mistakes a ranker must learn to avoid (hard negative). Partial agreement is medium.
The level is a statement about difficulty, never a label: the grader decides relevance.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .config import DEFAULT_WEIGHTS, LEVELS, MiningConfig, RetrievalError, check_weights

LEXICAL, RERANKER = "rank_bm25", "rank_champion"
REQUIRED = ("query_id", "product_id", "rank_bm25", "rank_bienc")


def rank_columns(df: pd.DataFrame) -> list[str]:
    """Every retriever's rank column (rank_bm25, rank_bienc, rank_champion, and any other rank_*)."""
    return [c for c in df.columns if c.startswith("rank_")]


def _check_retrieved(retrieved: pd.DataFrame) -> list[str]:
    if not isinstance(retrieved, pd.DataFrame):
        raise RetrievalError(f"retrieved must be a DataFrame, got {type(retrieved).__name__}.")
    missing = [c for c in REQUIRED if c not in retrieved.columns]
    if missing:
        raise RetrievalError(f"retrieved table lacks column(s) {missing}. Fix: pass the output of "
                             "`ltr retrieve` / ltr.retrieval.retrieve (query_id, product_id, rank_bm25, rank_bienc).")
    if retrieved.empty:
        raise RetrievalError("retrieved table has no rows. Fix: retrieve for at least one query first.")
    cols = rank_columns(retrieved)
    for c in cols:
        r = retrieved[c]
        if not pd.api.types.is_numeric_dtype(r) or (r.dropna() < 1).any():
            raise RetrievalError(f"retrieved column '{c}' must hold 1-based ranks (numbers >= 1, NaN = not "
                                 "returned). Fix: pass the output of `ltr retrieve`.")
    if retrieved.duplicated(["query_id", "product_id"]).any():
        raise RetrievalError("retrieved table has duplicate (query_id, product_id) rows. Fix: one row per pair.")
    return cols


def levels(retrieved: pd.DataFrame, top: int) -> np.ndarray:
    """The level of every row (see the module docstring and `ltr.retrieval`), from ranks alone."""
    cols = _check_retrieved(retrieved)
    at_top = np.column_stack([retrieved[c].to_numpy(float) <= top for c in cols])  # NaN compares False
    n_top = at_top.sum(axis=1)
    lexical_only = at_top[:, cols.index(LEXICAL)] & (n_top == 1)
    first = [c for c in cols if c != RERANKER]
    n_found = np.column_stack([retrieved[c].notna().to_numpy() for c in first]).sum(axis=1)
    return np.select(
        [n_top == len(cols), lexical_only, n_top == 1, n_top >= 2, n_found >= 2],
        ["easy_positive", "hard_positive", "hard_negative", "medium", "medium"], default="easy_negative")


def mine(retrieved: pd.DataFrame, cfg: MiningConfig | None = None) -> pd.DataFrame:
    """`retrieved` with a `level` column (one of LEVELS)."""
    cfg = cfg or MiningConfig()
    return retrieved.assign(level=levels(retrieved, cfg.top)).reset_index(drop=True)


def quotas(available: dict[str, int], budget: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer pairs per level: proportional to weights, capped by what a level holds (the rest goes to
    the other levels in proportion), summing to min(budget, pairs in positively weighted levels)."""
    active = {lvl: w for lvl, w in weights.items() if w > 0 and available.get(lvl, 0) > 0}
    out = {lvl: 0 for lvl in LEVELS}
    left = min(budget, sum(available[lvl] for lvl in active))
    while active:
        tot = sum(active.values())
        full = [lvl for lvl, w in active.items() if left * w / tot >= available[lvl]]
        if not full:
            break
        for lvl in full:
            out[lvl] = available[lvl]
            left -= available[lvl]
            del active[lvl]
    if active:
        tot = sum(active.values())
        share = {lvl: left * w / tot for lvl, w in active.items()}
        base = {lvl: int(np.floor(s)) for lvl, s in share.items()}
        rest = left - sum(base.values())
        by_frac = sorted(active, key=lambda lvl: (-(share[lvl] - base[lvl]), LEVELS.index(lvl)))
        for lvl in by_frac[:rest]:
            base[lvl] += 1
        out.update(base)
    return out


def _round_robin(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Rows in a seeded order that visits every query once before any query twice."""
    rows = rows.assign(_u=rng.random(len(rows)))
    rows = rows.sort_values(["query_id", "_u"], kind="stable")
    rows["_round"] = rows.groupby("query_id", sort=False).cumcount()
    return rows.sort_values(["_round", "_u"], kind="stable")


def allocate_budget(mined: pd.DataFrame, budget: int, weights: dict[str, float] | None = None,
                    seed: int = 0) -> pd.DataFrame:
    """The pairs to label: `budget` rows of `mined` spread over levels by `weights` (see `ltr.retrieval`)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise RetrievalError(f"budget must be a whole number > 0, got {budget!r}. Fix: e.g. budget=2000.")
    if "level" not in getattr(mined, "columns", ()):
        raise RetrievalError("mined table lacks column 'level'. Fix: pass the output of ltr.retrieval.mine.")
    unknown = sorted(set(mined["level"]) - set(LEVELS))
    if unknown:
        raise RetrievalError(f"mined table has unknown level(s) {unknown}. Fix: use levels of {list(LEVELS)}.")
    w = check_weights(dict(DEFAULT_WEIGHTS if weights is None else weights), key="weights")
    base = mined.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    available = base["level"].value_counts().to_dict()
    q = quotas(available, int(budget), w)
    rng = np.random.default_rng(seed)
    picks = [_round_robin(base[base["level"] == lvl], rng).head(q[lvl]) for lvl in LEVELS if q[lvl] > 0]
    sel = pd.concat(picks).drop(columns=["_u", "_round"]) if picks else base.iloc[:0]
    sel = sel.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    sel.attrs["allocation"] = {lvl: int(q[lvl]) for lvl in LEVELS}
    sel.attrs["shortfall"] = int(budget) - len(sel)
    return sel
