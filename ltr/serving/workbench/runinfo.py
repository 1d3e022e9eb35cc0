"""What a run directory knows about each (query, product) pair, read once, read-only.

The workbench never writes here: the one thing it writes is a human label, through labels.human. Every
table is optional, so the page works on a bare catalog (a service started with --products) as well as on a
full `ltr run` output; what is absent is shown as absent, never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.schemas import query_id

ENGAGEMENT = ("impressions", "clicks", "carts", "purchases")
LOW_CONTENT_GRADE = 1  # a click on a product the LLM grades 0 or 1 is a click the content label disputes


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    return df if columns is None else df[[c for c in columns if c in df.columns]]


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class RunInfo:
    """The run's tables keyed by (query_id, product_id); empty frames where the run has none."""

    root: Path | None
    queries: pd.DataFrame = field(default_factory=pd.DataFrame)       # query_id, query, candidate ids
    judgments: pd.DataFrame = field(default_factory=pd.DataFrame)     # query_id, product_id, grade
    llm: pd.DataFrame = field(default_factory=pd.DataFrame)           # query_id, product_id, score, grade
    engagement: pd.DataFrame = field(default_factory=pd.DataFrame)    # query_id, product_id, ENGAGEMENT
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)        # Optuna trials (tuning.py's trials.csv)
    operating_point: dict[str, Any] = field(default_factory=dict)    # alpha, beta, blend_weight
    _pairs: dict[str, pd.DataFrame] | None = field(default=None, repr=False)
    _queries: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path | None) -> RunInfo:
        if run_dir is None:
            return cls(root=None)
        root = Path(run_dir)
        ds = root / "dataset"
        info = cls(root=root)
        info.judgments = _dedup(_read(ds / "judgments.parquet", ["query_id", "product_id", "grade"]))
        info.llm = _dedup(_read(root / "labels" / "labels.parquet", ["query_id", "product_id", "score", "grade"]))
        info.engagement = _dedup(_read(root / "training_frame.parquet", ["query_id", "product_id", *ENGAGEMENT]))
        info.queries = _queries(_read(ds / "queries.parquet", ["query_id", "query"]),
                                _read(ds / "candidates.parquet", ["query_id", "product_id", "retrieval_rank"]),
                                info.judgments)
        trials = root / "reports" / "trials.csv"
        info.trials = pd.read_csv(trials) if trials.exists() else pd.DataFrame()
        info.operating_point = _json(root / "reports" / "summary.json").get("operating_point") or {}
        return info

    def _query(self, qid: str) -> dict[str, Any] | None:
        if self._queries is None:
            self._queries = {r["query_id"]: r for r in self.queries.to_dict("records")}
        return self._queries.get(qid)

    def candidates(self, query: str) -> list[str]:
        """The run's candidates of a query (retrieval order, then judged products it lacks); [] if unknown."""
        row = self._query(query_id(query))
        return list(row["candidates"]) if row else []

    def judged_query_ids(self) -> list[str]:
        return sorted(self.judgments["query_id"].unique()) if len(self.judgments) else []

    def text_of(self, qid: str) -> str | None:
        row = self._query(qid)
        return str(row["query"]) if row else None

    def pairs(self, qid: str) -> pd.DataFrame:
        """Per product of a query: human grade (judgments), LLM score and grade, engagement counts."""
        if self._pairs is None:
            self._pairs = _by_query(self.judgments, self.llm, self.engagement)
        return self._pairs.get(qid, _EMPTY)

    def judged(self, qid: str) -> dict[str, int]:
        """product -> the dataset's human grade, for one query."""
        p = self.pairs(qid)
        return {} if "human_grade" not in p else {k: int(v) for k, v in p["human_grade"].dropna().items()}

    def label_transform(self) -> tuple[float, float] | None:
        """(alpha, beta) of the polarization the model's content labels went through, when the run says."""
        op = self.operating_point
        if op.get("alpha") is None or op.get("beta") is None:
            return None
        return float(op["alpha"]), float(op["beta"])


_EMPTY = pd.DataFrame(index=pd.Index([], name="product_id", dtype=object))


def _by_query(judgments: pd.DataFrame, llm: pd.DataFrame, engagement: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every query's pairs joined once: a page view reads one query's rows, never the run's tables."""
    parts = [df.rename(columns=ren) for df, ren in ((judgments, {"grade": "human_grade"}),
                                                   (llm, {"score": "llm_score", "grade": "llm_grade"}),
                                                   (engagement, {})) if len(df)]
    if not parts:
        return {}
    out = parts[0]
    for df in parts[1:]:
        out = out.merge(df, on=["query_id", "product_id"], how="outer")
    return {qid: g.drop(columns="query_id").set_index("product_id") for qid, g in out.groupby("query_id")}


def _dedup(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or not len(df):
        return pd.DataFrame()
    return df.drop_duplicates(["query_id", "product_id"], keep="last").reset_index(drop=True)


def _queries(queries: pd.DataFrame | None, cands: pd.DataFrame | None, judgments: pd.DataFrame) -> pd.DataFrame:
    if queries is None or not len(queries):
        return pd.DataFrame(columns=["query_id", "query", "candidates"])
    lists: dict[str, list[str]] = {}
    if cands is not None and len(cands):
        for qid, g in cands.sort_values(["query_id", "retrieval_rank"]).groupby("query_id"):
            lists[qid] = list(g["product_id"])
    for qid, g in (judgments.groupby("query_id") if len(judgments) else []):
        have = lists.setdefault(qid, [])
        have += [p for p in g["product_id"] if p not in set(have)]
    q = queries.drop_duplicates("query_id").copy()
    q["candidates"] = [lists.get(qid, []) for qid in q["query_id"]]
    return q.reset_index(drop=True)


def polarized(score: float | None, transform: tuple[float, float] | None) -> float | None:
    """The LLM score as the model's content label saw it (labels.polarize), or None."""
    if score is None or transform is None or not np.isfinite(score):
        return None
    from labels.polarize import polarize

    return float(polarize([min(max(score, 0.0), 1.0)], *transform)[0])


__all__ = ["ENGAGEMENT", "LOW_CONTENT_GRADE", "RunInfo", "polarized"]
