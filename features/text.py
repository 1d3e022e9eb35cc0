"""How a product row becomes the text an encoder sees.

One function shared by the cross-encoder and the bi-encoder, so training, offline features and the
serving path all feed a model exactly the same string for the same product. Field order matters:
encoders truncate from the end, so the most decisive fields (title, brand, color, category) come
first and the long free text (bullets, description) last, character-capped so tokenization stays cheap.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

DEFAULT_FIELDS: tuple[str, ...] = ("title", "brand", "color", "category", "bullet_points", "description")
TEXT_FIELDS = frozenset(DEFAULT_FIELDS)
_LABELS = {"brand": "Brand", "color": "Color", "category": "Category"}


def _clean(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return " ".join(str(v).split())


def product_text(row: Mapping[str, Any] | pd.Series, fields: Iterable[str] = DEFAULT_FIELDS,
                 max_bullet_chars: int = 300, max_description_chars: int = 200) -> str:
    """Render one product as model input, e.g. ``"Kindle ... | Brand: Amazon | Color: Black | ..."``.

    Empty fields are skipped; bullets and description are truncated to the given character budgets.
    """
    fields = tuple(fields)
    bad = [f for f in fields if f not in TEXT_FIELDS]
    if bad:
        raise ValueError(f"unknown product text field(s) {bad}. Fix: use a subset of {list(DEFAULT_FIELDS)}.")
    parts: list[str] = []
    for f in fields:
        v = _clean(row.get(f) if hasattr(row, "get") else None)
        if not v:
            continue
        if f == "bullet_points":
            v = v[:max_bullet_chars]
        elif f == "description":
            v = v[:max_description_chars]
        parts.append(f"{_LABELS[f]}: {v}" if f in _LABELS else v)
    return " | ".join(parts)


def product_texts(products: pd.DataFrame, product_ids: Iterable[str] | None = None,
                  **kwargs: Any) -> list[str]:
    """Texts for `product_ids` (default: all rows, in order). Unknown ids raise, naming them."""
    if "product_id" not in products.columns or "title" not in products.columns:
        raise ValueError("products table needs columns 'product_id' and 'title'. Fix: pass the products "
                         "table of ltr.data.schemas.PRODUCTS.")
    by_id = products.drop_duplicates("product_id").set_index("product_id")
    ids = list(by_id.index) if product_ids is None else list(product_ids)
    missing = sorted(set(ids) - set(by_id.index))
    if missing:
        raise KeyError(f"{len(missing)} product_id(s) not in the products table, e.g. {missing[:3]}. "
                       "Fix: add those products or drop the pairs.")
    cache: dict[str, str] = {}
    out = []
    for pid in ids:
        if pid not in cache:
            cache[pid] = product_text(by_id.loc[pid], **kwargs)
        out.append(cache[pid])
    return out


def pair_texts(pairs: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame,
               **kwargs: Any) -> tuple[list[str], list[str]]:
    """(query texts, product texts) aligned with the rows of `pairs` (query_id, product_id)."""
    for c in ("query_id", "product_id"):
        if c not in pairs.columns:
            raise ValueError(f"pairs table is missing column '{c}'. Fix: pass (query_id, product_id) rows.")
    if "query_id" not in queries.columns or "query" not in queries.columns:
        raise ValueError("queries table needs columns 'query_id' and 'query'. Fix: pass the queries table "
                         "(ltr.data.dataset.derive_queries builds it from judgments).")
    qmap = dict(zip(queries["query_id"], queries["query"]))
    missing = sorted(set(pairs["query_id"]) - set(qmap))
    if missing:
        raise KeyError(f"{len(missing)} query_id(s) not in the queries table, e.g. {missing[:3]}. "
                       "Fix: add those queries.")
    return [qmap[q] for q in pairs["query_id"]], product_texts(products, pairs["product_id"], **kwargs)


__all__ = ["DEFAULT_FIELDS", "pair_texts", "product_text", "product_texts"]
