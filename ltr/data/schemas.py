"""Table contracts shared by every stage.

Each stage is a function from typed tables to typed tables; the schemas here are the contract. They
are checked on write *and* on read, so a bad file fails loudly at the boundary where it enters,
naming the table, the column and the fix, instead of surfacing as a NaN three stages later.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from pydantic import Field

from .config import StrictConfig


class SchemaError(ValueError):
    """A table does not satisfy its declared schema. The message names the column and the fix."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "datetime"
    required: bool = True
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    allow_extra: bool = True
    doc: str = ""
    extra_kind: str | None = None  # if set, every extra column must be of this kind (e.g. features)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def validate(self, df: pd.DataFrame, where: str = "") -> pd.DataFrame:
        """Check and normalise dtypes; return a new frame with declared columns first."""
        return validate(df, self, where)


_KIND_FIX = {
    "str": "store it as text (e.g. df[col] = df[col].astype(str))",
    "int": "store whole numbers without missing values (e.g. df[col].astype('int64'))",
    "float": "store it as a number (e.g. pd.to_numeric(df[col]))",
    "bool": "store it as True/False (e.g. df[col].astype(bool))",
    "datetime": "store it as a timestamp (e.g. pd.to_datetime(df[col], utc=True))",
}


def _err(schema: TableSchema, where: str, msg: str) -> SchemaError:
    loc = f"{schema.name}" + (f" ({where})" if where else "")
    return SchemaError(f"{loc}: {msg}")


def _coerce(s: pd.Series, col: Column, schema: TableSchema, where: str) -> pd.Series:
    kind = col.kind
    fix = _KIND_FIX[kind]
    bad = SchemaError  # noqa: F841
    if kind == "str":
        if not (pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)):
            raise _err(schema, where, f"column '{col.name}' must be str, got {s.dtype}. Fix: {fix}.")
        nonnull = s.dropna()
        if len(nonnull) and not nonnull.map(lambda v: isinstance(v, str)).all():
            raise _err(schema, where, f"column '{col.name}' must hold only text values. Fix: {fix}.")
        return s.astype(object)
    if kind == "int":
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            raise _err(schema, where, f"column '{col.name}' must be int, got {s.dtype}. Fix: {fix}.")
        if s.isna().any():
            if col.nullable:
                return s.astype("float64")
            raise _err(schema, where, f"column '{col.name}' has missing values. Fix: {fix}.")
        if pd.api.types.is_float_dtype(s) and not np.all(np.mod(s.to_numpy(), 1) == 0):
            raise _err(schema, where, f"column '{col.name}' must hold whole numbers. Fix: {fix}.")
        return s.astype("int64")
    if kind == "float":
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            raise _err(schema, where, f"column '{col.name}' must be numeric, got {s.dtype}. Fix: {fix}.")
        return s.astype("float64")
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s):
            return s.astype(bool)
        if pd.api.types.is_integer_dtype(s) and set(pd.unique(s)) <= {0, 1}:
            return s.astype(bool)
        raise _err(schema, where, f"column '{col.name}' must be bool, got {s.dtype}. Fix: {fix}.")
    if kind == "datetime":
        if not pd.api.types.is_datetime64_any_dtype(s):
            raise _err(schema, where, f"column '{col.name}' must be a timestamp, got {s.dtype}. Fix: {fix}.")
        if getattr(s.dt, "tz", None) is None:
            s = s.dt.tz_localize("UTC")
        return s.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    raise ValueError(f"unknown column kind {kind!r}")


def validate(df: pd.DataFrame, schema: TableSchema, where: str = "") -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise _err(schema, where, f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in schema.required if c not in df.columns]
    if missing:
        kinds = ", ".join(f"'{m}' ({schema.column(m).kind})" for m in missing)
        raise _err(schema, where, f"missing required column(s) {kinds}. Fix: add them; "
                   f"expected columns: {', '.join(c.name for c in schema.columns if c.required)}.")
    declared = {c.name for c in schema.columns}
    extra = [c for c in df.columns if c not in declared]
    if extra and not schema.allow_extra:
        raise _err(schema, where, f"unexpected column(s) {extra}. Fix: drop them.")
    out = {}
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        s = _coerce(df[col.name], col, schema, where)
        if not col.nullable and col.kind != "int" and s.isna().any():
            n = int(s.isna().sum())
            raise _err(schema, where, f"column '{col.name}' has {n} missing value(s) but is not nullable. "
                       "Fix: fill or drop those rows.")
        if col.min is not None or col.max is not None:
            vals = s.dropna()
            if col.min is not None and len(vals) and (vals < col.min).any():
                raise _err(schema, where, f"column '{col.name}' has values below {col.min} "
                           f"(min seen {vals.min()}). Fix: keep it within [{col.min}, {col.max}].")
            if col.max is not None and len(vals) and (vals > col.max).any():
                raise _err(schema, where, f"column '{col.name}' has values above {col.max} "
                           f"(max seen {vals.max()}). Fix: keep it within [{col.min}, {col.max}].")
        out[col.name] = s
    for name in extra:
        s = df[name]
        if schema.extra_kind is not None:
            s = _coerce(s, Column(name, schema.extra_kind, nullable=True), schema, where)
        out[name] = s
    res = pd.DataFrame(out, index=df.index)
    if schema.key:
        dup = res.duplicated(list(schema.key))
        if dup.any():
            ex = res.loc[dup, list(schema.key)].iloc[0].to_dict()
            raise _err(schema, where, f"{int(dup.sum())} duplicate key(s) on {list(schema.key)}, e.g. {ex}. "
                       "Fix: deduplicate before writing.")
    return res.reset_index(drop=True)


# --- the contracts -------------------------------------------------------------------------------

# Only the id and the title are required: most public catalogs have no price, rating or category, and an
# absent column means "unknown" (NaN / None) everywhere, as a missing cell does (ltr.data.dataset
# `complete_products` adds them so readers never test for a column).
PRODUCTS = TableSchema("products", (
    Column("product_id", "str"),
    Column("title", "str"),
    Column("description", "str", required=False, nullable=True),
    Column("bullet_points", "str", required=False, nullable=True),
    Column("brand", "str", required=False, nullable=True),
    Column("color", "str", required=False, nullable=True),
    Column("category", "str", required=False, nullable=True, doc="' > '-joined path"),
    Column("price", "float", required=False, nullable=True, min=0),
    Column("rating", "float", required=False, nullable=True, min=0, max=5),
    Column("rating_count", "float", required=False, nullable=True, min=0, doc="number of reviews (popularity)"),
), key=("product_id",))

QUERIES = TableSchema("queries", (
    Column("query_id", "str"),
    Column("query", "str"),
    Column("segment", "str", required=False, nullable=True, doc="head | torso | tail"),
    Column("query_type", "str", required=False, nullable=True,
           doc="broad | attribute | brand | misspelt | tail"),
), key=("query_id",))

JUDGMENTS = TableSchema("judgments", (
    Column("query", "str"),
    Column("product_id", "str"),
    Column("grade", "int", min=0, max=3, doc="ESCI E/S/C/I = 3/2/1/0"),
    Column("query_id", "str", required=False),
    Column("esci_label", "str", required=False, nullable=True),
), key=("query", "product_id"))

CANDIDATES = TableSchema("candidates", (
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("retrieval_rank", "int", required=False, min=1),
    Column("retrieval_score", "float", required=False, nullable=True),
    Column("level", "str", required=False, nullable=True,
           doc="difficulty level of a mined pair (ltr.retrieval.LEVELS); labels carry it as provenance"),
), key=("query_id", "product_id"))

# Rank metadata of catalog-wide retrieval (ltr.retrieval): one row per pair in the union of the retrievers'
# top-k; a rank is 1-based and NaN where that retriever did not return the pair. `ltr mine` adds the level
# and whether the budget chose the pair for labelling.
RETRIEVED = TableSchema("retrieved", (
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("rank_bm25", "float", nullable=True, min=1),
    Column("rank_bienc", "float", nullable=True, min=1),
    Column("rank_champion", "float", required=False, nullable=True, min=1, doc="rank within the query's union"),
    Column("score_bm25", "float", required=False, nullable=True),
    Column("score_bienc", "float", required=False, nullable=True),
    Column("score_champion", "float", required=False, nullable=True),
    Column("level", "str", required=False, nullable=True, doc="ltr.retrieval.LEVELS"),
    Column("selected", "bool", required=False, doc="chosen for labelling by the budget allocation"),
), key=("query_id", "product_id"))

TRUTH = TableSchema("truth", (
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("grade", "int", min=0, max=3),
), key=("query_id", "product_id"))

IMPRESSIONS = TableSchema("impressions", (
    Column("request_id", "str"),
    Column("ts", "datetime"),
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("position", "int", min=1),
    Column("clicked", "bool"),
    Column("added_to_cart", "bool"),
    Column("purchased", "bool"),
), key=("request_id", "product_id"))

LABELS = TableSchema("labels", (
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("score", "float", min=0, max=1, doc="expected grade / 3"),
    Column("p0", "float", nullable=True, min=0, max=1),
    Column("p1", "float", nullable=True, min=0, max=1),
    Column("p2", "float", nullable=True, min=0, max=1),
    Column("p3", "float", nullable=True, min=0, max=1),
    Column("backend", "str"),
    Column("model", "str"),
    Column("prompt_version", "str"),
    Column("cost", "float", min=0, doc="dollars"),
    Column("created_at", "datetime"),
    Column("output_mode", "str", required=False, nullable=True,
           doc="how an LLM's grade distribution was obtained: <request mode>/<source>, e.g. logprobs/logprobs, "
               "json_schema/one-hot, json_schema+samples:5/one-hot (the mean of 5 answers)"),
    Column("level", "str", required=False, nullable=True,
           doc="difficulty level of a mined pair (ltr.retrieval), as provenance; absent for candidate lists"),
), key=("query_id", "product_id"))

FEATURES = TableSchema("features", (
    Column("query_id", "str"),
    Column("product_id", "str"),
    Column("event_timestamp", "datetime"),
), key=("query_id", "product_id", "event_timestamp"), extra_kind="float")

SCHEMAS: dict[str, TableSchema] = {s.name: s for s in
                                   (PRODUCTS, QUERIES, JUDGMENTS, CANDIDATES, TRUTH, IMPRESSIONS,
                                    LABELS, FEATURES, RETRIEVED)}


# --- identifiers ---------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """Lower-case, NFKC, collapsed whitespace: the identity of a query."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", str(text)).lower()).strip()


def query_id(text: str) -> str:
    """Stable id of a query: a hash of its normalized text (same text -> same id, everywhere)."""
    return "q_" + hashlib.sha1(normalize_query(text).encode("utf-8")).hexdigest()[:12]


def query_ids(texts: Iterable[str]) -> list[str]:
    return [query_id(t) for t in texts]


def product_text_hash(row: dict | pd.Series, fields: Iterable[str] = ("title", "brand", "color", "category",
                                                                      "bullet_points", "description")) -> str:
    """Hash of the product text a grader sees: a changed title re-grades; an unchanged one never pays twice."""
    h = hashlib.sha1()
    for f in fields:
        v = row.get(f) if hasattr(row, "get") else None
        h.update(("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


# --- training frames ------------------------------------------------------------------------------

class FrameColumns(StrictConfig):
    """Names of the columns of a training frame (one row per query-product pair)."""

    query_id: str = "query_id"
    product_id: str = "product_id"
    content_score: str = Field("content_score", description="LLM label score in [0,1]")
    impressions: str = "impressions"
    clicks: str = "clicks"
    carts: str = "carts"
    purchases: str = "purchases"
    # evaluation only
    grade: str = Field("grade", description="true/human content grade 0..3 (evaluation only)")
    segment: str = Field("segment", description="head | torso | tail; derived from impressions when absent")
    heldout_impressions: str = "heldout_impressions"
    heldout_clicks: str = "heldout_clicks"
    heldout_carts: str = "heldout_carts"
    heldout_purchases: str = "heldout_purchases"
    click_propensity: str = Field("click_propensity", description="per-pair attractiveness for the PBM; "
                                  "estimated from held-out clicks when absent")
    timestamp: str = "event_timestamp"

    def reserved(self) -> list[str]:
        """Columns that are never model features (ids, label inputs, evaluation-only data)."""
        return list(self.model_dump().values())
