"""Tables of pairs -> the texts an encoder sees, aligned row by row.

The rendering itself is `ltr.data.product_text` (ENCODER_LAYOUT), shared with the labeler, so training,
offline features and the serving path feed a model exactly the same string for the same product; this
module adds the table plumbing (id lookups with clear errors, one render per distinct product).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from ltr.data.product_text import TEXT_FIELDS, product_text

DEFAULT_FIELDS: tuple[str, ...] = TEXT_FIELDS


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


__all__ = ["DEFAULT_FIELDS", "pair_texts", "product_text", "product_texts"]  # product_text: re-exported
