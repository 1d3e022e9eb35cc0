"""Publish relevance labels (human judgments, LLM labels, engagement labels) for the Feast LabelView.

Feast 0.67's `LabelView` declares the conflict policy, but `get_historical_features` does not apply it:
`feast.labeling.resolve_conflicts` is only called by the UI server (and without labeler priorities,
so LABELER_PRIORITY silently falls back to last-write-wins there). So we apply Feast's own resolver
with our priority order (human > llm > grader > engagement by default) when publishing: the view's
parquet source holds one resolved row per pair, the full history sits next to it for audit.

Labels grade the *text* of a (query, product) pair, which does not change with time; they are
stamped with the config's static timestamp so that a point-in-time join at any example time finds
them (their real creation time is kept in the history file).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from feast.labeling import ConflictPolicy, resolve_conflicts

from ltr.data.dataset import with_query_ids, write_table
from ltr.data.schemas import JUDGMENTS, LABELS, Column, TableSchema

LABEL_SOURCE = TableSchema("relevance_labels", (
    Column("query_id", "str"), Column("product_id", "str"), Column("event_timestamp", "datetime"),
    Column("label_score", "float", min=0, max=1), Column("label_grade", "float", min=0, max=3),
    Column("labeler", "str"), Column("labeler_kind", "str"),
    Column("created_at", "datetime", required=False, nullable=True),
), key=("query_id", "product_id"))


def labeler_kind(backend: str) -> str:
    """'grader' for the local fine-tuned grader backends, 'llm' for every other LLM backend, 'human' for a
    person's correction (labels.human, written into labels.parquet by the labels stage): the latest human
    label wins, so a correction made after the dataset's judgment beats it."""
    b = str(backend).lower()
    if b == "human":
        return "human"
    return "grader" if ("grader" in b or "finetun" in b) else "llm"


def label_rows(labels: pd.DataFrame | None = None, judgments: pd.DataFrame | None = None,
               engagement: pd.DataFrame | None = None) -> pd.DataFrame:
    """All label rows (history): LLM labels (LABELS schema), human judgments (JUDGMENTS), engagement
    labels (query_id, product_id, score in [0,1]); each with labeler provenance."""
    parts = []
    if labels is not None and len(labels):
        lab = LABELS.validate(labels, where="publishing labels")
        parts.append(pd.DataFrame({
            "query_id": lab["query_id"], "product_id": lab["product_id"], "label_score": lab["score"],
            "label_grade": lab["score"] * 3.0,
            "labeler": [f"{labeler_kind(b)}:{m}@{p}" for b, m, p in zip(lab["backend"], lab["model"],
                                                                         lab["prompt_version"])],
            "labeler_kind": [labeler_kind(b) for b in lab["backend"]], "created_at": lab["created_at"]}))
    if judgments is not None and len(judgments):
        j = with_query_ids(JUDGMENTS.validate(judgments, where="publishing human judgments"))
        parts.append(pd.DataFrame({
            "query_id": j["query_id"], "product_id": j["product_id"], "label_score": j["grade"] / 3.0,
            "label_grade": j["grade"].astype("float64"), "labeler": "human", "labeler_kind": "human",
            "created_at": pd.NaT}))
    if engagement is not None and len(engagement):
        miss = [c for c in ("query_id", "product_id", "score") if c not in engagement.columns]
        if miss:
            raise ValueError(f"engagement labels lack column(s) {miss}. Fix: pass query_id, product_id, score.")
        e = engagement
        if ((e["score"] < 0) | (e["score"] > 1)).any():
            raise ValueError("engagement labels: column 'score' must lie in [0, 1]. Fix: normalise it.")
        parts.append(pd.DataFrame({
            "query_id": e["query_id"].astype(str), "product_id": e["product_id"].astype(str),
            "label_score": e["score"].astype("float64"), "label_grade": e["score"].astype("float64") * 3.0,
            "labeler": "engagement", "labeler_kind": "engagement", "created_at": pd.NaT}))
    if not parts:
        return pd.DataFrame(columns=["query_id", "product_id", "label_score", "label_grade", "labeler",
                                     "labeler_kind", "created_at"])
    out = pd.concat(parts, ignore_index=True)
    out["created_at"] = pd.to_datetime(out["created_at"], utc=True)
    return out


def publish_labels(out_dir: str | Path, static_ts: pd.Timestamp, priority: list[str],
                   labels: pd.DataFrame | None = None, judgments: pd.DataFrame | None = None,
                   engagement: pd.DataFrame | None = None) -> int:
    """Write OUT/relevance_labels.parquet (resolved) and relevance_labels_history.parquet; returns rows."""
    hist = label_rows(labels, judgments, engagement)
    if hist.empty:
        return 0
    hist = hist.assign(event_timestamp=static_ts, _order=range(len(hist)))
    # Feast's resolver: highest-priority labeler kind wins; within a kind the latest created_at.
    hist["_t"] = hist["created_at"].fillna(pd.Timestamp(0, tz="UTC"))
    resolved = resolve_conflicts(hist, ["query_id", "product_id"], ["label_score", "label_grade"], "_t",
                                 "labeler_kind", ConflictPolicy.LABELER_PRIORITY, list(priority))
    resolved = resolved.drop(columns=["_t", "_order"]).sort_values(["query_id", "product_id"])
    out_dir = Path(out_dir)
    write_table(resolved, out_dir / "relevance_labels.parquet", LABEL_SOURCE)
    h = hist.drop(columns=["_t", "_order"])
    write_table(h, out_dir / "relevance_labels_history.parquet",
                TableSchema("relevance_labels_history", LABEL_SOURCE.columns))
    return len(resolved)
