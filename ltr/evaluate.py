"""Score a judged dataset the model never saw: `ltr evaluate --dataset DIR --model models:/NAME@champion`.

The dataset is any directory with products.parquet + judgments.parquet (query, product_id, grade 0..3),
e.g. ../shared/data/esci, used as is. Features are computed on the fly with the offline functions
(features/ondemand.py: lexical and product features with BM25 over *this* dataset's catalog, bi-encoder
cosine, cross-encoder score); engagement features are absent -> NaN, which the trees route the way they
learnt for never-shown pairs in training, and a query with no engagement at all goes to the model's cold
route when it carries one (`ltr.cold_route`). With `features_dir`, values present in that online store win.

Output JSON: NDCG@k with ESCI gains (E=1, S=0.1, C=0.01, I=0) and exponential gains (2^grade - 1),
Irrelevant@k, n_queries, which features were computed / missing, and per-query values.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from features.ondemand import OnDemandFeatures, is_engagement
from ltr.data import metrics as M
from ltr.data.dataset import Dataset
from ltr.data.provenance import stamp

from .cold_route import routed_scores
from .serving.assemble import FeatureAssembler
from .serving.model import ServingError, check_bi_encoder, load_ranker


def _mean(s: pd.Series) -> float:
    return float(s.mean()) if s.notna().any() else float("nan")


def _judged_pairs(dataset_dir: str | Path, k: int, max_queries: int | None) -> tuple[Dataset, pd.DataFrame]:
    """The dataset and its judgments in a stable order (optionally the first `max_queries` query ids)."""
    if not isinstance(k, int) or k < 1:
        raise ServingError(f"k must be a positive int, got {k!r}. Fix: e.g. k=10.")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise ServingError(f"max_queries must be a positive int or None, got {max_queries!r}.")
    ds = Dataset.load(dataset_dir)
    j = ds.judgments.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    if j.empty:
        raise ServingError(f"{dataset_dir}: judgments.parquet has no rows. Fix: evaluate on a judged dataset.")
    if max_queries is not None:
        keep = sorted(j["query_id"].unique())[:max_queries]
        j = j[j["query_id"].isin(keep)].reset_index(drop=True)
    return ds, j


def _assembler(ds: Dataset, lm, bi_encoder, features_dir, on_missing: str, where: str
               ) -> tuple[FeatureAssembler, list[str], Any]:
    """Features for the model: online store values where given, else computed; engagement may be absent."""
    store = None
    if features_dir is not None:
        from features.store import LtrStore
        store = LtrStore(features_dir)
    from ltr.data.embedding_cache import default_cache_dir
    # product embeddings from the machine's cache (the feature stage and earlier evaluations fill it)
    ondemand = OnDemandFeatures(ds.products, cross_encoder=lm.cross_encoder, bi_encoder=bi_encoder,
                                embedding_cache=default_cache_dir())
    asm = FeatureAssembler(lm.features, ondemand, store, on_missing="nan")
    unexpected = [f for f in asm.missing if not is_engagement(f)]  # absent engagement is the normal case
    if unexpected and on_missing == "error":
        raise ServingError(f"model feature(s) {unexpected} cannot be computed for {where}: the model carries no "
                           "part that computes them. Fix: register it with its cross-encoder (the pipeline "
                           "does), or pass --ce-model DIR for ce_score / bi_encoder='default' for bienc_cos; "
                           "on_missing='nan' scores with them missing (a degraded model).")
    if unexpected:
        warnings.warn(f"evaluate: model feature(s) {unexpected} cannot be computed here and are NaN "
                      "(ce_score needs the model's cross-encoder, bienc_cos a bi-encoder).", stacklevel=3)
    return asm, unexpected, store


def _per_query(j: pd.DataFrame, scores, k: int) -> pd.DataFrame:
    qid, pid, grade = j["query_id"].to_numpy(), j["product_id"].to_numpy(), j["grade"].to_numpy(float)
    per = pd.DataFrame({
        f"ndcg@{k}": M.ndcg_per_query(qid, scores, grade, k, "esci", pid),
        f"ndcg_exp@{k}": M.ndcg_per_query(qid, scores, grade, k, "exp", pid),
        f"irrelevant@{k}": M.irrelevant_per_query(qid, scores, grade, k, pid),
    })
    g = j.groupby("query_id", sort=True)
    per["query"] = g["query"].first()
    per["n_judged"] = g.size()
    per["n_relevant"] = g["grade"].apply(lambda s: int((s > 0).sum()))
    return per


def _write_json(result: dict[str, Any], out_path: str | Path) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out)  # a reader never sees half a report


def evaluate_dataset(dataset_dir: str | Path, model_uri: str, out_path: str | Path | None = None, *,
                     k: int = 10, cross_encoder: str | Path | None = None, bi_encoder: str | Path | None = "default",
                     features_dir: str | Path | None = None, tracking_uri: str | None = None,
                     on_missing: Literal["error", "nan"] = "error", max_queries: int | None = None,
                     progress: bool = True, ce_path: str | Path | None = None) -> dict[str, Any]:
    """Evaluate `model_uri` on the judged dataset `dataset_dir`; write JSON to `out_path` (if given); return it.

    Engagement features are NaN unless `features_dir` holds them (never an error). Any other model
    feature nothing here can compute is refused by default (on_missing='error': a model scored without
    its cross-encoder is a different, degraded model); on_missing='nan' scores with NaN and lists them
    under `features_missing_non_engagement`. The model's own parts (cross-encoder, bi-encoder identity)
    come from its registered run; `cross_encoder` overrides the download but must be the recorded version.
    max_queries evaluates only the first N query ids (sorted), for quick checks. `ce_path` is an alias
    of `cross_encoder` (the CLI's --ce-model).
    """
    if ce_path is not None:
        if cross_encoder is not None and Path(cross_encoder) != Path(ce_path):
            raise ServingError("pass the cross-encoder once: cross_encoder and ce_path differ.")
        cross_encoder = ce_path
    t0 = time.perf_counter()
    ds, j = _judged_pairs(dataset_dir, k, max_queries)
    lm = load_ranker(model_uri, cross_encoder=cross_encoder, tracking_uri=tracking_uri)
    check_bi_encoder(lm, bi_encoder)
    asm, unexpected, store = _assembler(ds, lm, bi_encoder, features_dir, on_missing, str(dataset_dir))
    t_feat = time.perf_counter()
    X = asm.frame_pairs(j[["query", "product_id"]], progress=progress)
    t_score = time.perf_counter()
    scores, routed = routed_scores(lm.ranker, lm.cold_route, X, j["query_id"].to_numpy())
    per = _per_query(j, scores, k)
    result: dict[str, Any] = {
        "dataset": str(Path(dataset_dir).resolve()),
        "model": lm.describe(),
        "k": k,
        f"ndcg@{k}": _mean(per[f"ndcg@{k}"]),
        f"ndcg_exp@{k}": _mean(per[f"ndcg_exp@{k}"]),
        f"irrelevant@{k}": _mean(per[f"irrelevant@{k}"]),
        "n_queries": len(per),
        "n_queries_with_relevant": int(per[f"ndcg@{k}"].notna().sum()),
        "n_pairs": len(j),
        "gains": {"esci": {str(g_): v for g_, v in M.ESCI_GAINS.items()}, "exp": "2^grade - 1"},
        "features_computed": [f for f, s in asm.sources.items() if s != "missing"],
        "features_missing": asm.missing,
        "features_missing_non_engagement": unexpected,
        "feature_sources": asm.sources,
        "engagement": "from online store" if store is not None else "absent (NaN), as for never-shown pairs",
        "cold_route": {"choice": lm.cold_route.scorer_.name if lm.cold_route is not None else None,
                       "queries_routed": int(j.loc[routed, "query_id"].nunique())},
        "seconds": {"features": round(t_score - t_feat, 3), "total": round(time.perf_counter() - t0, 3)},
        "per_query": [
            {"query_id": q, "query": r["query"], "n_judged": int(r["n_judged"]), "n_relevant": int(r["n_relevant"]),
             f"ndcg@{k}": float(r[f"ndcg@{k}"]), f"ndcg_exp@{k}": float(r[f"ndcg_exp@{k}"]),
             f"irrelevant@{k}": float(r[f"irrelevant@{k}"])}
            for q, r in per.iterrows()],
    }
    if "bienc_cos" in X.columns:  # what the shop has without us: the zero-shot bi-encoder, on the same pairs
        base = _per_query(j, X["bienc_cos"].fillna(-1.0).to_numpy(), k)
        result["bienc_zero_shot"] = {f"ndcg@{k}": _mean(base[f"ndcg@{k}"]),
                                     f"irrelevant@{k}": _mean(base[f"irrelevant@{k}"]),
                                     "model_vs_bienc": M.paired_bootstrap(per[f"ndcg@{k}"], base[f"ndcg@{k}"])}
    result = M.nan_to_none({**result, **stamp()})
    if out_path is not None:
        _write_json(result, out_path)
    return result


__all__ = ["evaluate_dataset"]
