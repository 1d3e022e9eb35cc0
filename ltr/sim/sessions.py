"""Simulated engagement logs: a production-like baseline ranker shows pages, the click model reacts.

Used twice: by the built-in world, and by `simulate_engagement` for a real catalog without logs (ESCI),
where popularity is the real rating_count. Logs made here are always marked simulated in metadata.json.

Why a baseline ranker that ignores relevance: real logs are collected under a production ranker that
leans on lexical match and popularity, so what gets *shown* (and hence clicked) is biased too. The
engagement report measures how far clicks are from relevance (Spearman of grade vs CTR, queries whose
most-clicked item is irrelevant), which is the gap the platform exists to close.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ltr.data.dataset import Dataset, DatasetError, update_metadata, write_table
from ltr.data.engagement import pair_counts
from ltr.data.schemas import IMPRESSIONS

from .click_model import ClickModel, _group_z

EPOCH = pd.Timestamp("2026-09-01", tz="UTC")  # fixed: logs never depend on the wall clock
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(str(text).lower()))


def lexical_overlap(queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """Fraction of each query's tokens found in the paired text: the crude match a legacy ranker uses."""
    cache: dict[str, set[str]] = {}
    out = np.zeros(len(queries))
    for i, (q, t) in enumerate(zip(queries, texts)):
        qt = cache.get(q)
        if qt is None:
            qt = cache[q] = tokens(q)
        if qt:
            out[i] = len(qt & tokens(t)) / len(qt)
    return out


def baseline_scores(pairs: pd.DataFrame, w_lexical: float = 1.5, w_popularity: float = 0.7,
                    w_discount: float = 1.0) -> np.ndarray:
    """Static score of the production ranker the logs were collected under (it never sees relevance).

    Needs columns query_id, lexical (0..1), popularity; discount optional.
    """
    pop_z = _group_z(np.log1p(pairs["popularity"].fillna(0).to_numpy(dtype="float64")), pairs["query_id"].to_numpy())
    disc = pairs["discount"].fillna(0).to_numpy(dtype="float64") if "discount" in pairs.columns else 0.0
    return w_lexical * pairs["lexical"].to_numpy(dtype="float64") + w_popularity * pop_z + w_discount * disc


def simulate_sessions(pairs: pd.DataFrame, sessions: Mapping[str, int], rng: np.random.Generator, *,
                      click_model: ClickModel | None = None, days: int = 28, depth: int = 10,
                      ranker_noise: float = 0.6, progress: bool = True) -> pd.DataFrame:
    """Impressions for `sessions[query_id]` searches of each query, spread uniformly over `days`.

    `pairs` (one row per candidate) needs query_id, product_id, baseline_score and the click-model inputs
    (grade, popularity, price?, discount?). Each session shows the top `depth` candidates by
    baseline_score plus per-session noise (the ranker's day-to-day churn, which also gives lower items
    some exposure). Returns a frame valid for the IMPRESSIONS schema (plus pair_idx into `pairs`).
    """
    if days < 1:
        raise ValueError("days must be >= 1. Fix: pass days=28 for four weeks of logs.")
    if depth < 1:
        raise ValueError("depth must be >= 1 (results shown per page).")
    cm = click_model or ClickModel()
    pairs = pairs.reset_index(drop=True)
    probs = cm.probabilities(pairs)
    by_q = pairs.groupby("query_id", sort=False).indices
    q_order = [q for q in pd.unique(pairs["query_id"]) if sessions.get(q, 0) > 0]
    blocks_pair, blocks_pos, blocks_sess = [], [], []
    sess_q, n_sess_total = [], 0
    for q in tqdm(q_order, desc="sessions", disable=not progress, leave=False):
        idx = by_q[q]
        n = int(sessions[q])
        k = min(depth, len(idx))
        noisy = pairs["baseline_score"].to_numpy()[idx][None, :] + rng.normal(0.0, ranker_noise, (n, len(idx)))
        top = np.argsort(-noisy, axis=1, kind="stable")[:, :k]
        blocks_pair.append(idx[top].ravel())
        blocks_pos.append(np.tile(np.arange(1, k + 1), n))
        blocks_sess.append(np.repeat(np.arange(n_sess_total, n_sess_total + n), k))
        sess_q.extend([q] * n)
        n_sess_total += n
    if n_sess_total == 0:
        raise ValueError("no sessions to simulate. Fix: give at least one query a positive session count.")
    pair_idx = np.concatenate(blocks_pair)
    position = np.concatenate(blocks_pos)
    sess = np.concatenate(blocks_sess)
    secs = rng.integers(0, days * 86400, n_sess_total)
    # request ids follow time order, so the log reads like a real one; ties broken by session number
    order = np.lexsort((np.arange(n_sess_total), secs))
    rank_of = np.empty(n_sess_total, dtype=np.int64)
    rank_of[order] = np.arange(n_sess_total)
    width = max(7, len(str(n_sess_total)))
    req_names = np.array([f"r{i:0{width}d}" for i in range(n_sess_total)], dtype=object)
    frame = pd.DataFrame({
        "request_id": req_names[rank_of[sess]],
        "ts": EPOCH + pd.to_timedelta(secs[sess], unit="s"),
        "query_id": pairs["query_id"].to_numpy()[pair_idx],
        "product_id": pairs["product_id"].to_numpy()[pair_idx],
        "position": position.astype("int64"),
        "attract": probs["attract"].to_numpy()[pair_idx],
        "p_cart": probs["p_cart"].to_numpy()[pair_idx],
        "p_purchase": probs["p_purchase"].to_numpy()[pair_idx],
        "pair_idx": pair_idx,
        "_order": rank_of[sess],
    })
    frame = frame.sort_values(["_order", "position"], kind="stable").reset_index(drop=True)
    frame = cm.simulate(frame, rng)
    return frame.drop(columns=["attract", "p_cart", "p_purchase", "_order"])


def engagement_report(impressions: pd.DataFrame, grades: pd.DataFrame, min_impressions: int = 30,
                      max_examples: int = 10) -> dict[str, Any]:
    """How biased a proxy the clicks are: Spearman(grade, CTR), most-clicked-is-irrelevant, conversion by grade.

    `grades` holds query_id, product_id, grade (ground truth for the world, judgments for real data).
    """
    agg = pair_counts(impressions).merge(grades[["query_id", "product_id", "grade"]],
                                         on=["query_id", "product_id"], how="inner")
    agg["ctr"] = agg["clicks"] / agg["impressions"]
    enough = agg[agg["impressions"] >= min_impressions]
    rho = float(spearmanr(enough["grade"], enough["ctr"]).statistic) if len(enough) > 2 else float("nan")
    clicked = agg[agg["clicks"] > 0].sort_values(["query_id", "clicks", "product_id"], ascending=[True, False, True])
    top = clicked.drop_duplicates("query_id")
    top_irrelevant = top[top["grade"] == 0]
    # top 10 by CTR (among well-shown items) per query: how much of it is irrelevant
    top10 = (enough.sort_values(["query_id", "ctr", "product_id"], ascending=[True, False, True])
             .groupby("query_id", sort=False).head(10))
    by_grade = agg.groupby("grade")[["impressions", "clicks", "carts", "purchases"]].sum()
    conv = {}
    for g, r in by_grade.iterrows():
        conv[str(int(g))] = {
            "impressions": int(r["impressions"]), "clicks": int(r["clicks"]), "purchases": int(r["purchases"]),
            "ctr": round(float(r["clicks"] / max(r["impressions"], 1)), 4),
            "purchase_per_click": round(float(r["purchases"] / max(r["clicks"], 1)), 4),
            "share_of_purchases": round(float(r["purchases"] / max(by_grade["purchases"].sum(), 1)), 4),
        }
    return {
        "impressions": len(impressions),
        "sessions": int(impressions["request_id"].nunique()),
        "clicks": int(impressions["clicked"].sum()),
        "add_to_carts": int(impressions["added_to_cart"].sum()),
        "purchases": int(impressions["purchased"].sum()),
        "ctr": round(float(impressions["clicked"].mean()), 4),
        "spearman_grade_ctr": round(rho, 4),
        "spearman_min_impressions": int(min_impressions),
        "spearman_pairs": len(enough),
        "queries_with_clicks": int(top["query_id"].nunique()),
        "queries_top_clicked_irrelevant": len(top_irrelevant),
        "examples_top_clicked_irrelevant": top_irrelevant[["query_id", "product_id"]].head(max_examples)
        .to_dict("records"),
        "irrelevant_share_top10_by_ctr": round(float((top10["grade"] == 0).mean()), 4) if len(top10) else None,
        "by_grade": conv,
    }


def lexical_grade(overlap: pd.Series | np.ndarray) -> np.ndarray:
    """Word overlap in [0, 1] as a 0-3 grade the click model can take (cuts at 0.2, 0.45, 0.7)."""
    return np.digitize(np.asarray(overlap, dtype="float64"), [0.2, 0.45, 0.7]).astype("float64")


def _session_counts(query_ids: Sequence[str], mean_sessions: float, rng: np.random.Generator,
                    skew: float = 0.8) -> dict[str, int]:
    """Lognormal search volume per query (a few head queries, many tail ones) with the given mean."""
    raw = rng.lognormal(0.0, skew, len(query_ids))
    counts = np.maximum(1, np.round(raw / raw.mean() * mean_sessions)).astype(int)
    return dict(zip(query_ids, counts.tolist()))


def simulate_engagement(dataset_dir: str | Path, seed: int = 7, days: int = 28, sessions_per_query: float = 150,
                        depth: int = 10, click_model: ClickModel | None = None, overwrite: bool = False,
                        min_impressions: int = 30, progress: bool = True,
                        relevance: Literal["lexical", "judgments"] = "lexical") -> dict[str, Any]:
    """Add a simulated `impressions.parquet` to a real catalog dataset (e.g. the ESCI sample).

    Popularity is the catalog's rating_count, price its price (missing -> average). What the shoppers
    perceive as relevant is, by default, the query's word overlap with the product text in four levels
    (`relevance="lexical"`), a signal independent of the judgments: logs simulated from the judgments
    (`relevance="judgments"`; unjudged candidates count as grade 1) would hand a ranker evaluated on those
    same judgments their answers through its engagement features. The report says which was used.
    Existing real logs are never overwritten; earlier simulated logs only with `overwrite=True`.
    Returns the engagement report, which is also stored in metadata.json under "engagement".
    """
    root = Path(dataset_dir)
    ds = Dataset.load(root)
    if (root / "impressions.parquet").exists():
        if not ds.engagement_simulated:
            raise DatasetError(f"{root}/impressions.parquet holds real (not simulated) logs. Fix: simulate into a "
                               "copy of the dataset; real logs are never overwritten.")
        if not overwrite:
            raise DatasetError(f"{root}/impressions.parquet already exists (simulated). Fix: pass overwrite=True "
                               "(CLI: --overwrite) to replace it.")
    if relevance not in ("lexical", "judgments"):
        raise ValueError(f"relevance={relevance!r}. Fix: use 'lexical' or 'judgments'.")
    if sessions_per_query <= 0:
        raise ValueError("sessions_per_query must be > 0. Fix: e.g. sessions_per_query=150.")
    rng = np.random.default_rng(seed)
    cand = ds.candidates[["query_id", "product_id"]].copy()
    judged = ds.judgments[["query_id", "product_id", "grade"]].drop_duplicates(["query_id", "product_id"])
    cand = cand.merge(judged, on=["query_id", "product_id"], how="left")
    n_unjudged = int(cand["grade"].isna().sum())
    cand["grade"] = cand["grade"].fillna(1.0)
    prods = ds.products.set_index("product_id")
    cand["popularity"] = prods["rating_count"].reindex(cand["product_id"]).fillna(0.0).to_numpy()
    cand["price"] = prods["price"].reindex(cand["product_id"]).to_numpy()
    cand["discount"] = (prods["discount"].reindex(cand["product_id"]).fillna(0.0).to_numpy()
                        if "discount" in prods.columns else 0.0)
    qtext = ds.queries.set_index("query_id")["query"]
    ptext = (prods["title"].fillna("") + " " + prods["brand"].fillna("") + " " + prods["color"].fillna(""))
    cand["lexical"] = lexical_overlap(qtext.reindex(cand["query_id"]).tolist(),
                                      ptext.reindex(cand["product_id"]).tolist())
    cand = cand.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    cand["baseline_score"] = baseline_scores(cand)
    qids = sorted(cand["query_id"].unique())
    sessions = _session_counts(qids, sessions_per_query, rng)
    shown = cand if relevance == "judgments" else cand.assign(grade=lexical_grade(cand["lexical"]))
    imps = simulate_sessions(shown, sessions, rng, click_model=click_model, days=days, depth=depth,
                             progress=progress)
    write_table(imps.drop(columns=["pair_idx"]), root / "impressions.parquet", IMPRESSIONS)
    report = engagement_report(imps, cand, min_impressions=min_impressions)
    report.update({"seed": int(seed), "days": int(days), "depth": int(depth), "unjudged_candidates": n_unjudged,
                   "popularity_source": "rating_count", "relevance_source":
                   "judgments" if relevance == "judgments" else "lexical overlap (grade-independent)"})
    update_metadata(root, simulated_engagement=True, engagement=report)
    return report


__all__ = ["EPOCH", "baseline_scores", "engagement_report", "lexical_overlap", "simulate_engagement",
           "simulate_sessions", "tokens"]
