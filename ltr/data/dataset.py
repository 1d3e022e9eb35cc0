"""Datasets as directories: every stage reads and writes the same layout.

    DIR/products.parquet      required (only product_id and title; other columns optional)
    DIR/judgments.parquet     required (query, product_id, grade 0..3): human judgments; optional when
                              queries.parquet is there (a catalog and a query log: `ltr retrieve` and the
                              main job find its candidates, see ltr.retrieval)
    DIR/queries.parquet       optional (derived from judgments/candidates when absent)
    DIR/candidates.parquet    optional (derived from judgments when absent)
    DIR/impressions.parquet   optional engagement log
    DIR/truth.parquet         optional ground truth, evaluation only
    DIR/metadata.json         optional provenance (source, seed, simulated_engagement, ...)

Writes go through a temp file + rename so a crash never leaves a half-written table.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schemas import (
    CANDIDATES,
    IMPRESSIONS,
    JUDGMENTS,
    PRODUCTS,
    QUERIES,
    SCHEMAS,
    TRUTH,
    SchemaError,
    TableSchema,
    query_id,
)

REQUIRED_TABLES = ("products", "judgments")
OPTIONAL_TABLES = ("queries", "candidates", "impressions", "truth")


class DatasetError(ValueError):
    """A dataset directory is missing or malformed. The message names the file and the fix."""


def _atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    table = pa.Table.from_pandas(df, preserve_index=False)
    # Drop pandas metadata so files are byte-identical for identical content.
    table = table.replace_schema_metadata(None)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_table(df: pd.DataFrame, path: str | Path, schema: TableSchema | str) -> pd.DataFrame:
    """Validate `df` against `schema` and write it as parquet atomically; returns the validated frame."""
    schema = SCHEMAS[schema] if isinstance(schema, str) else schema
    path = Path(path)
    valid = schema.validate(df, where=f"writing {path.name}")
    _atomic_write_parquet(valid, path)
    return valid


def read_table(path: str | Path, schema: TableSchema | str, nonempty: bool = False) -> pd.DataFrame:
    """Read a parquet table and validate it on the way in.

    nonempty: a table without rows is refused with "no rows" before its dtypes are checked, since an
    empty column has no dtype worth reporting (pandas reads it as object) and the real problem is the
    missing data."""
    schema = SCHEMAS[schema] if isinstance(schema, str) else schema
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found. Fix: check the path, or create it with `ltr world`.")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pragma: no cover - pyarrow error types vary
        raise DatasetError(f"{path}: not a readable parquet file ({e}).") from e
    if nonempty and df.empty:
        raise DatasetError(f"{path}: the {schema.name} table has no rows. Fix: write at least one row "
                           f"(columns {', '.join(schema.required)}).")
    if schema is PRODUCTS:
        return complete_products(df, where=f"reading {path}")
    return schema.validate(df, where=f"reading {path}")


def complete_products(products: pd.DataFrame, where: str = "") -> pd.DataFrame:
    """The PRODUCTS table validated, with every optional column present (absent -> missing values).

    A catalog as it comes may have only product_id and title; an absent column and an empty cell mean
    the same thing ("unknown"), so every reader gets the same columns and treats both as NaN / None,
    exactly as training treated missing cells. A column that is null in every row (pyarrow's `null`
    type reads back as object) is taken as missing numbers, not as a type error.
    """
    if not isinstance(products, pd.DataFrame):
        return PRODUCTS.validate(products, where)  # raises, naming the type
    df = products.copy()
    for col in PRODUCTS.columns:
        if col.name in df.columns:
            if col.kind == "float" and df[col.name].isna().all():
                df[col.name] = df[col.name].astype("float64")
            continue
        df[col.name] = np.nan if col.kind == "float" else pd.Series([None] * len(df), index=df.index, dtype=object)
    return PRODUCTS.validate(df, where)


def with_query_ids(judgments: pd.DataFrame) -> pd.DataFrame:
    if "query_id" not in judgments.columns:
        judgments = judgments.assign(query_id=[query_id(q) for q in judgments["query"]])
    return judgments


@dataclass
class Dataset:
    """A loaded dataset directory. `truth` is deliberately not loaded here: see `load_truth`."""

    root: Path
    products: pd.DataFrame
    judgments: pd.DataFrame
    queries: pd.DataFrame
    candidates: pd.DataFrame
    impressions_path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _impressions: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | Path) -> "Dataset":
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset directory {root} does not exist. Fix: pass --dataset DIR holding "
                               "products.parquet and judgments.parquet (e.g. create one with `ltr world --out DIR`).")
        has_queries = (root / "queries.parquet").exists()
        for t in REQUIRED_TABLES:
            if not (root / f"{t}.parquet").exists() and not (t == "judgments" and has_queries):
                raise DatasetError(f"{root}: missing {t}.parquet. Fix: a dataset directory needs "
                                   f"{' and '.join(x + '.parquet' for x in REQUIRED_TABLES)} (or products.parquet "
                                   "and queries.parquet, whose candidates `ltr retrieve` finds).")
        products = read_table(root / "products.parquet", PRODUCTS, nonempty=True)
        judgments = (with_query_ids(read_table(root / "judgments.parquet", JUDGMENTS, nonempty=True))
                     if (root / "judgments.parquet").exists() else no_judgments())
        queries = (read_table(root / "queries.parquet", QUERIES) if (root / "queries.parquet").exists()
                   else derive_queries(judgments))
        candidates = (read_table(root / "candidates.parquet", CANDIDATES)
                      if (root / "candidates.parquet").exists()
                      else CANDIDATES.validate(judgments[["query_id", "product_id"]].drop_duplicates()))
        impressions = root / "impressions.parquet" if (root / "impressions.parquet").exists() else None
        meta = json.loads((root / "metadata.json").read_text()) if (root / "metadata.json").exists() else {}
        unknown = set(candidates["product_id"]) - set(products["product_id"])
        if unknown:
            raise DatasetError(f"{root}: candidates.parquet names {len(unknown)} product_id(s) not in "
                               f"products.parquet, e.g. {sorted(unknown)[:3]}. Fix: add those products.")
        return cls(root, products, judgments, queries, candidates, impressions, meta)

    def load_truth(self) -> pd.DataFrame | None:
        """Ground truth for *evaluation only*; no training path may call this."""
        p = self.root / "truth.parquet"
        return read_table(p, TRUTH) if p.exists() else None

    @property
    def brings_candidates(self) -> bool:
        """Candidate lists given (candidates.parquet) or derivable (judged pairs); else retrieval finds them."""
        return len(self.candidates) > 0

    @property
    def has_engagement(self) -> bool:
        if self._impressions is not None:
            return len(self._impressions) > 0
        return self.impressions_path is not None and pq.ParquetFile(self.impressions_path).metadata.num_rows > 0

    @property
    def impressions(self) -> pd.DataFrame | None:
        """The whole engagement log as one frame, read and validated on first use. Stages that stream the log
        (engagement features, per-pair counts: `features.engagement_sql`) read `impressions_path` instead, so a
        log larger than memory never has to fit in it."""
        if self._impressions is None and self.impressions_path is not None:
            self._impressions = read_table(self.impressions_path, IMPRESSIONS)
        return self._impressions

    @property
    def engagement_simulated(self) -> bool:
        return bool(self.metadata.get("simulated_engagement", False))


def no_judgments() -> pd.DataFrame:
    """The judgments of a dataset without human labels: no rows, the declared columns."""
    return JUDGMENTS.validate(pd.DataFrame({"query": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                                            "grade": pd.Series(dtype="int64"), "query_id": pd.Series(dtype=object)}))


def derive_queries(judgments: pd.DataFrame) -> pd.DataFrame:
    j = with_query_ids(judgments)
    q = j[["query_id", "query"]].drop_duplicates("query_id").sort_values("query_id")
    return QUERIES.validate(q)


def write_metadata(root: str | Path, meta: dict[str, Any]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "metadata.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, root / "metadata.json")


def update_metadata(root: str | Path, **kv: Any) -> dict[str, Any]:
    root = Path(root)
    meta = json.loads((root / "metadata.json").read_text()) if (root / "metadata.json").exists() else {}
    meta.update(kv)
    write_metadata(root, meta)
    return meta


__all__ = ["Dataset", "DatasetError", "SchemaError", "complete_products", "read_table", "write_table",
           "write_metadata", "update_metadata", "derive_queries", "with_query_ids"]
