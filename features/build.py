"""Compute every feature family of a dataset into parquet sources for the Feast repo.

    build_features(dataset_dir, out_dir, cfg) writes OUT/<view>.parquet for the views of
    feature_repo/ltr_repo.py (lexical, product_features, engagement_qp, engagement_product, content)
    plus relevance_labels.parquet, and OUT/manifest.json. Then `LtrStore(out_dir, cfg).apply()`.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.dataset import Dataset, write_table
from ltr.data.schemas import FEATURES, LABELS, Column, TableSchema

from .config import FeaturesConfig
from .engagement_sql import engagement_features_parquet, impressed_pairs
from .product import product_features
from .store import write_manifest

PRODUCT_KEYED = TableSchema("product_keyed_features", (
    Column("product_id", "str"), Column("event_timestamp", "datetime"),
), key=("product_id", "event_timestamp"), extra_kind="float")
CONTENT_COLUMNS = ("ce_score", "bienc_cos")


def candidate_pairs(ds: Dataset) -> pd.DataFrame:
    """Every (query, product) pair the ranker may see: candidates, judged pairs, impressed pairs (read from the
    log by DuckDB, in order of first appearance, so the log is never loaded whole)."""
    parts = [ds.candidates[["query_id", "product_id"]], ds.judgments[["query_id", "product_id"]]]
    if ds.has_engagement:
        parts.append(impressed_pairs(ds.impressions_path))
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True)


def content_frame(ce_scores: pd.DataFrame, static_ts: pd.Timestamp) -> pd.DataFrame:
    """Validate cross-/bi-encoder scores (query_id, product_id, ce_score and/or bienc_cos) for the content view."""
    if not isinstance(ce_scores, pd.DataFrame):
        raise TypeError("ce_scores must be a DataFrame[query_id, product_id, ce_score[, bienc_cos]].")
    cols = [c for c in CONTENT_COLUMNS if c in ce_scores.columns]
    if not cols or not {"query_id", "product_id"} <= set(ce_scores.columns):
        raise ValueError(f"ce_scores has columns {list(ce_scores.columns)}. Fix: pass query_id, product_id and "
                         f"at least one of {list(CONTENT_COLUMNS)}.")
    df = ce_scores[["query_id", "product_id"] + cols].copy()
    for c in CONTENT_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["event_timestamp"] = static_ts
    return df


def read_content_scores(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Content scores computed before (a run's RUN/cross_encoder/bienc_scores.parquet and llm_scores.parquet),
    merged on (query_id, product_id): what `ltr features build --content-scores` reuses instead of embedding
    the catalog again."""
    merged: pd.DataFrame | None = None
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"content scores {path} not found. Fix: pass a parquet file a run wrote (e.g. "
                                    "RUN/cross_encoder/bienc_scores.parquet) or leave --content-scores out.")
        df = pd.read_parquet(path)
        cols = [c for c in CONTENT_COLUMNS if c in df.columns]
        content_frame(df, pd.Timestamp(0, tz="UTC"))  # refuses, naming the columns, a file without scores
        df = df[["query_id", "product_id"] + cols]
        merged = df if merged is None else merged.drop(columns=[c for c in cols if c in merged.columns]).merge(
            df, on=["query_id", "product_id"], how="outer")
    if merged is None:
        raise ValueError("no content score files given. Fix: pass --content-scores PATH at least once.")
    return merged


def build_features(dataset_dir: str | Path, out_dir: str | Path, cfg: FeaturesConfig | None = None,
                   ce_scores: pd.DataFrame | None = None, progress: bool = True,
                   labels: pd.DataFrame | str | Path | None = None,
                   engagement_labels: pd.DataFrame | None = None,
                   judgments: pd.DataFrame | None = None) -> dict[str, Any]:
    """Compute the configured feature families of `dataset_dir` into parquet sources under `out_dir`.

    ce_scores: DataFrame[query_id, product_id, ce_score[, bienc_cos]] for the content view (skipped when
    None). labels: the LLM labels table (or its parquet path); when None, DATASET/labels.parquet is used
    if present. Human judgments go into the label view (where they win): the dataset's, or `judgments`, e.g.
    only a pilot's seed queries, so that the others' content label is the labeler's.
    Returns {view: rows, ..., "seconds": {...}}.
    """
    cfg = cfg or FeaturesConfig()
    ds = Dataset.load(dataset_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    static_ts = pd.Timestamp(cfg.static_timestamp)
    static_ts = static_ts.tz_localize("UTC") if static_ts.tzinfo is None else static_ts.tz_convert("UTC")
    info: dict[str, Any] = {"dataset": str(Path(dataset_dir).resolve()), "views": {}, "seconds": {},
                            "windows_days": cfg.windows_days, "static_timestamp": str(static_ts),
                            "engagement_simulated": ds.engagement_simulated}
    fam = set(cfg.families)

    def timed(name: str, fn):
        t = time.perf_counter()
        r = fn()
        info["seconds"][name] = round(time.perf_counter() - t, 3)
        return r

    if "lexical" in fam:
        from .lexical import lexical_features  # bm25s: imported by the families that need it
        pairs = candidate_pairs(ds)
        lex = timed("lexical", lambda: lexical_features(pairs, ds.queries, ds.products, progress=progress))
        lex["event_timestamp"] = static_ts
        info["views"]["lexical"] = len(write_table(lex, out / "lexical.parquet", FEATURES))
    if "product" in fam:
        pf = timed("product", lambda: product_features(ds.products))
        pf["event_timestamp"] = static_ts
        info["views"]["product_features"] = len(write_table(pf, out / "product_features.parquet", PRODUCT_KEYED))
    if "engagement" in fam and ds.has_engagement:  # out of core: the log streams through DuckDB
        info["views"].update(timed("engagement", lambda: engagement_features_parquet(
            ds.impressions_path, out / "engagement_qp.parquet", out / "engagement_product.parquet", FEATURES,
            PRODUCT_KEYED, cfg.windows_days, cfg.smoothing, cfg.position_prior_strength)))
    if "content" in fam and ce_scores is not None:
        info["views"]["content"] = len(write_table(content_frame(ce_scores, static_ts), out / "content.parquet",
                                                   FEATURES))
    if "labels" in fam:
        from .labels_view import publish_labels  # imports Feast (~250 MB): only the label family needs it
        if labels is None and (Path(dataset_dir) / "labels.parquet").exists():
            labels = Path(dataset_dir) / "labels.parquet"
        if isinstance(labels, (str, Path)):
            labels = pd.read_parquet(labels)
        if labels is not None:
            labels = LABELS.validate(labels, where="build_features labels")
        n = timed("labels", lambda: publish_labels(out, static_ts, cfg.labeler_priority, labels=labels,
                                                   judgments=ds.judgments if judgments is None else judgments,
                                                   engagement=engagement_labels))
        if n:
            info["views"]["relevance_labels"] = n
    write_manifest(out, info)
    return info
