"""`ltr evaluate --counterfactual --logs DATASET`: a registered model's engagement, estimated from a dataset's
impression log, beside the ranker the log was collected under.

The model ranks every candidate of every logged query (features computed as `ltr evaluate` computes
them: `ltr.evaluate`'s assembler, engagement from an online store when one is given, else absent); the
offline estimators (`ltr.counterfactual.estimators`) then read its top 10 against the log. The direct
model learns from pair features every candidate has, logged or not: lexical match, product features,
retrieval score, and price and popularity relative to the query's other candidates (what a shopper
compares on the page).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.lexical import lexical_features
from features.product import product_features
from ltr.data import metrics as M
from ltr.data.dataset import Dataset

from .estimators import OfflineEvaluator
from .logs import CounterfactualError, ImpressionLog


def logged_dataset(logs_dir: str | Path) -> tuple[Dataset, ImpressionLog]:
    """The dataset at `logs_dir` and its impression log, coded; refuses a dataset without one."""
    ds = Dataset.load(logs_dir)
    if ds.impressions_path is None:
        raise CounterfactualError(f"{logs_dir}: no impressions.parquet, so there is no log to learn from. Fix: "
                                  "pass --logs a dataset with an engagement log (`ltr world`, `ltr ingest-ubi`).")
    return ds, ImpressionLog.from_frame(ds.impressions, where=f"{logs_dir}/impressions.parquet")


def candidate_pairs(ds: Dataset, log: ImpressionLog) -> pd.DataFrame:
    """query_id, query, product_id of every candidate of a logged query, and every logged pair."""
    cand = ds.candidates[["query_id", "product_id"]]
    pairs = pd.concat([cand[cand["query_id"].isin(log.queries)], log.pairs], ignore_index=True)
    pairs = pairs.drop_duplicates(["query_id", "product_id"]).sort_values(["query_id", "product_id"])
    text = ds.queries.set_index("query_id")["query"]
    lost = pd.Index(pairs["query_id"].unique()).difference(text.index)
    if len(lost):
        raise CounterfactualError(f"{ds.root}: {len(lost)} logged query_id(s) are not in queries.parquet, e.g. "
                                  f"{list(lost[:3])}. Fix: add their text to queries.parquet.")
    known = pairs["product_id"].isin(ds.products["product_id"])
    return pairs[known].assign(query=text.reindex(pairs.loc[known, "query_id"]).to_numpy()).reset_index(drop=True)


def _within_query_z(values: pd.Series, groups: pd.Series) -> np.ndarray:
    g = values.groupby(groups.to_numpy())
    std = g.transform("std", ddof=0)
    return ((values - g.transform("mean")) / std.where(std > 1e-9)).to_numpy(dtype="float64")


def pair_features(ds: Dataset, pairs: pd.DataFrame) -> pd.DataFrame:
    """Direct-model features of each (query_id, product_id): lexical, product, retrieval, relative price,
    popularity and discount. NaN where unknown (the regression learns what missing means)."""
    lex = lexical_features(pairs[["query_id", "product_id"]], ds.queries, ds.products, progress=False)
    prod = product_features(ds.products).set_index("product_id")
    out = pd.concat([lex.reset_index(drop=True),
                     prod.reindex(pairs["product_id"]).reset_index(drop=True)], axis=1)
    products = ds.products.set_index("product_id")
    pop = products["popularity"] if "popularity" in products.columns else products["rating_count"]
    q = pairs["query_id"].reset_index(drop=True)
    out["rel_log_popularity"] = _within_query_z(np.log1p(pop.reindex(pairs["product_id"]).astype(float))
                                                .reset_index(drop=True), q)
    out["rel_cheapness"] = _within_query_z(-np.log(products["price"].reindex(pairs["product_id"]).astype(float)
                                                   .where(lambda s: s > 0)).reset_index(drop=True), q)
    if "discount" in products.columns:
        out["discount"] = products["discount"].reindex(pairs["product_id"]).astype(float).to_numpy()
    cand = ds.candidates.set_index(["query_id", "product_id"])
    keys = pd.MultiIndex.from_frame(pairs[["query_id", "product_id"]])
    for col in ("retrieval_score", "retrieval_rank"):
        if col in cand.columns:
            out[col] = cand[col].reindex(keys).to_numpy(dtype="float64")
    return out


def model_scores(ds: Dataset, pairs: pd.DataFrame, model_uri: str, *, tracking_uri: str | None = None,
                 cross_encoder: str | Path | None = None, features_dir: str | Path | None = None,
                 progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The registered model's score of every pair, with features as `ltr evaluate` computes them."""
    from ltr.cold_route import routed_scores
    from ltr.evaluate import _assembler
    from ltr.serving.model import check_bi_encoder, load_ranker

    lm = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
    check_bi_encoder(lm, "default")
    asm, unexpected, store = _assembler(ds, lm, "default", features_dir, "error", str(ds.root))
    X = asm.frame_pairs(pairs[["query", "product_id"]], progress=progress)
    scores, _ = routed_scores(lm.ranker, lm.cold_route, X, pairs["query_id"].to_numpy())
    info = {"model": lm.describe(), "engagement": "from online store" if store is not None else "absent (NaN)"}
    return pairs[["query_id", "product_id"]].assign(score=np.asarray(scores, dtype="float64")), info


def counterfactual_report(logs_dir: str | Path, model_uri: str, out_path: str | Path | None = None, *,
                          tracking_uri: str | None = None,
                          cross_encoder: str | Path | None = None, features_dir: str | Path | None = None,
                          k: int = 10, clip: float = 100.0, n_boot: int = 200, unit: str = "query", seed: int = 0,
                          progress: bool = True) -> dict[str, Any]:
    """Clicks and add-to-carts per search in the top k: the logging ranker's, and `model_uri`'s by clipped IPS,
    SNIPS, the direct model and doubly robust, each with a 95% bootstrap interval and the difference; written
    as JSON to `out_path` when given."""
    from ltr.evaluate import _write_json

    t0 = time.perf_counter()
    ds, log = logged_dataset(logs_dir)
    pairs = candidate_pairs(ds, log)
    evaluator = OfflineEvaluator(k=k, clip=clip, n_boot=n_boot, unit=unit, seed=seed)
    evaluator.fit(log, pair_features(ds, pairs))
    scores, info = model_scores(ds, pairs, model_uri, tracking_uri=tracking_uri, cross_encoder=cross_encoder,
                                features_dir=features_dir, progress=progress)
    report = M.nan_to_none({"logs": str(Path(logs_dir).resolve()), **info, **evaluator.evaluate(scores),
                            "per": "search, in the top k", "seconds": round(time.perf_counter() - t0, 2)})
    if out_path is not None:
        _write_json(report, out_path)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per outcome and estimator: value [95% CI], and the difference to the logging ranker."""
    def ci(x: list[float]) -> str:
        return f"[{x[0]:.4f}, {x[1]:.4f}]"

    lines = [f"counterfactual: {report['searches']} searches of {report['queries']} queries, top {report['k']}, "
             f"support {report['support']:.1%} of the model's examination on pairs the log showed"]
    for o, res in report["outcomes"].items():
        lines.append(f"{o:>14} logging ranker  {res['logging']['value']:.4f} {ci(res['logging']['ci95'])}")
        for name in ("ips", "snips", "dm", "dr"):
            r = res[name]
            rel = ("n/a" if r["rel_diff"] is None else f"{r['rel_diff']:+.1%} "
                   f"[{r['rel_diff_ci95'][0]:+.1%}, {r['rel_diff_ci95'][1]:+.1%}]")
            lines.append(f"{o:>14} model {name:>5}     {r['value']:.4f} {ci(r['ci95'])}  diff {r['diff']:+.4f} "
                         f"{ci(r['diff_ci95'])} ({rel})")
    return lines


__all__ = ["candidate_pairs", "counterfactual_report", "logged_dataset", "model_scores", "pair_features",
           "summary_lines"]
