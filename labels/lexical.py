"""Cheap lexical and attribute match signals between a query and a product.

They complement the encoder where it is weakest on product search: exact brand, colour, numbers and
units, and whether every query word is present (the difference between Exact and Substitute).
These are the grader's inputs (fitted models depend on them), distinct from the catalog features of
features/lexical.py; the shared tokens rules live on the floor (ltr.data.plurals).
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ltr.data.plurals import fold_plural_grader

_TOKEN = re.compile(r"[a-z0-9]+")
_NUM = re.compile(r"\d+(?:\.\d+)?")
_STOP = {"for", "and", "the", "with", "a", "an", "of", "in", "to", "on", "without", "by", "&"}
#: words that negate what follows ("bottle without straw", "not clear", "sin azucar"): ESCI has many such
#: queries, and a plain term match rewards exactly the products the shopper excluded.
_NEGATORS = {"without", "not", "no", "non", "sin", "except"}

LEXICAL_FEATURES = ("q_in_title", "q_in_text", "q_partial_text", "brand_in_query", "has_brand",
                    "color_in_query", "num_match", "has_num", "q_len", "title_len", "bigram_title",
                    "q_in_category", "has_negation", "neg_in_title")


def _s(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).lower()


def tokens(text: str) -> list[str]:
    return [fold_plural_grader(t) for t in _TOKEN.findall(text.lower()) if t not in _STOP]


def _frac(q: Sequence[str], bag: set[str]) -> float:
    return sum(t in bag for t in q) / len(q) if q else 0.0


def split_negation(query: str) -> tuple[str, list[str]]:
    """(the query before its first negator, the stemmed terms it excludes)."""
    words = query.lower().split()
    for i, w in enumerate(words):
        if w.strip("-,.;:") in _NEGATORS:
            return " ".join(words[:i]), tokens(" ".join(words[i + 1:]))
    return query, []


def pair_features(query: str, product: Mapping[str, Any]) -> list[float]:
    query, negated = split_negation(query)
    q = tokens(query)
    title = tokens(_s(product.get("title")))
    text_all = " ".join(_s(product.get(k)) for k in ("title", "brand", "color", "category", "bullet_points"))
    text = tokens(text_all)
    tset, xset = set(title), set(text)
    partial = sum(any((len(t) >= 4 and (w.startswith(t) or t.startswith(w) and len(w) >= 4)) for w in xset)
                  or t in xset for t in q) / len(q) if q else 0.0
    brand = tokens(_s(product.get("brand")))
    qset = set(q)
    brand_in_q = float(bool(brand) and all(b in qset for b in brand))
    color = tokens(_s(product.get("color")))
    color_in_q = float(bool(color) and any(c in qset for c in color))
    qnums = _NUM.findall(query.lower())
    tnums = set(_NUM.findall(text_all))
    num_match = sum(n in tnums for n in qnums) / len(qnums) if qnums else 0.0
    qb = set(itertools.pairwise(q))
    bigram = len(qb & set(itertools.pairwise(title))) / len(qb) if qb else 0.0
    cat = set(tokens(_s(product.get("category"))))
    return [_frac(q, tset), _frac(q, xset), partial, brand_in_q, float(bool(brand)), color_in_q, num_match,
            float(bool(qnums)), math.log1p(len(q)), math.log1p(len(title)), bigram, _frac(q, cat),
            float(bool(negated)), _frac(negated, tset) if negated else 0.0]


def lexical_matrix(queries: Sequence[str], products: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.asarray([pair_features(q, p) for q, p in zip(queries, products)], dtype=np.float32).reshape(
        len(queries), len(LEXICAL_FEATURES))
