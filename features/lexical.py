"""Lexical features of (query, product) pairs: BM25 per field, term coverage, attribute matches.

These are the cheap, explainable signals a cross-encoder should add to rather than replace: BM25 of
the query against title / bullets / description (bm25s, IDF over the catalog), the share of query
terms a product mentions, and exact/partial matches of brand, color, product type (last category
segment) and numbers with units ("32 oz", "10 inch"), and title matches that forgive typos, cut and glued
words (features/title_match.py). A value is NaN when it is undefined (no brand on the product, no number
in the query), never a made-up 0.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

import bm25s
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ltr.data.plurals import fold_plural
from ltr.data.schemas import normalize_query

from .names import LEXICAL, TITLE_MATCH
from .title_match import TitleMatcher

LEXICAL_FEATURES = LEXICAL  # declared in features/names.py
_N_TITLE = len(TITLE_MATCH)  # LEXICAL's last columns (names.py builds them from TITLE_MATCH): TitleMatcher's

STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
                       "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will", "with",
                       "without", "w/", "per", "your", "you", "our", "my", "me", "i"])

_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_SPLIT_NUM_UNIT = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)")

# unit spellings -> canonical unit; order matters only for readability
_UNITS = {
    "oz": "oz", "ounce": "oz", "ounces": "oz", "fl": "oz",
    "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb",
    "in": "inch", "inch": "inch", "inches": "inch", '"': "inch",
    "ft": "ft", "foot": "ft", "feet": "ft",
    "cm": "cm", "mm": "mm", "m": "m", "meter": "m", "meters": "m",
    "ml": "ml", "l": "l", "liter": "l", "liters": "l", "litre": "l", "qt": "qt", "quart": "qt",
    "gal": "gal", "gallon": "gal", "gallons": "gal",
    "g": "g", "gram": "g", "grams": "g", "kg": "kg",
    "gb": "gb", "tb": "tb", "mb": "mb",
    "w": "w", "watt": "w", "watts": "w", "v": "v", "volt": "v", "volts": "v", "mah": "mah",
    "pack": "pack", "pk": "pack", "count": "pack", "ct": "pack", "pcs": "pack", "pieces": "pack",
    "piece": "pack",
    "hz": "hz", "k": "k", "mp": "mp", "qt.": "qt",
}
_NUM_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s*(\"|[a-z]+\.?)?")


def tokenize(text: object) -> list[str]:
    """Lower-case word/number tokens; "32oz" -> ["32", "oz"] so numbers and units match either way."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    s = normalize_query(str(text))
    s = _SPLIT_NUM_UNIT.sub(" ", s)
    return _TOKEN.findall(s)


def content_terms(tokens: Iterable[str]) -> list[str]:
    return [t for t in tokens if t not in STOPWORDS]


def number_units(text: object) -> set[tuple[float, str]]:
    """Numbers followed by a known unit: "32 oz", "32oz", '10"', "10-inch" -> {(32.0, "oz"), (10.0, "inch")}."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return set()
    s = unicode_lower(str(text)).replace("-", " ")
    out = set()
    for num, unit in _NUM_UNIT.findall(s):
        if not unit:
            continue
        canon = _UNITS.get(unit.rstrip(".")) if unit != '"' else "inch"
        if canon is None:
            continue
        try:
            out.add((float(num), canon))
        except ValueError:  # pragma: no cover - regex guarantees a number
            continue
    return out


def unicode_lower(s: str) -> str:
    return normalize_query(s)


def _phrase_in(phrase: list[str], tokens: list[str]) -> bool:
    n = len(phrase)
    if n == 0:
        return False
    return any(tokens[i:i + n] == phrase for i in range(len(tokens) - n + 1))


def attribute_match(query_tokens: list[str], value: object) -> tuple[float, float]:
    """(exact, partial) match of an attribute value (brand, color, type) in the query.

    exact: the whole value appears as a phrase in the query (plural-folded); partial: the share of the
    value's tokens that appear in the query. (NaN, NaN) when the product has no value.
    """
    folded = [fold_plural(t) for t in query_tokens]
    return _folded_match(folded, set(folded), _folded_tokens(value))


def _folded_tokens(value: object) -> list[str]:
    return [fold_plural(t) for t in tokenize(value)]


def _folded_match(qt: list[str], qs: set[str], vt: list[str]) -> tuple[float, float]:
    """attribute_match on tokens already folded: a request folds its query once and the catalog's values
    once, not once per candidate and attribute (that was ~a third of a new query's lexical features)."""
    if not vt:
        return float("nan"), float("nan")
    exact = 1.0 if _phrase_in(vt, qt) else 0.0
    return exact, sum(1 for t in vt if t in qs) / len(vt)


def product_type(category: object) -> str | None:
    """The product type is the last segment of the ' > '-joined category path."""
    if category is None or (isinstance(category, float) and math.isnan(category)):
        return None
    parts = [p.strip() for p in str(category).split(">") if p.strip()]
    return parts[-1] if parts else None


def _coverage(folded_terms: list[str], doc_terms: set[str]) -> float:
    """Share of the query's content terms (plural-folded by the caller) the product mentions."""
    if not folded_terms:
        return float("nan")
    return sum(1 for t in folded_terms if t in doc_terms) / len(folded_terms)


def _num_features(q_nu: set[tuple[float, str]], p_nu: set[tuple[float, str]]) -> tuple[float, float]:
    """(match, conflict): share of the query's number+unit mentions the product states; and 1 when the
    product states the same unit only with other numbers (a 32 oz query vs a 16 oz bottle)."""
    if not q_nu:
        return float("nan"), float("nan")
    match = sum(1 for x in q_nu if x in p_nu) / len(q_nu)
    p_units = {u for _, u in p_nu}
    conflict = 1.0 if any(x not in p_nu and x[1] in p_units for x in q_nu) else 0.0
    return match, conflict


class _FieldIndex:
    """BM25 over one product text field, indexed once for the whole catalog."""

    def __init__(self, texts: list[object]):
        toks = [content_terms(tokenize(t)) for t in texts]
        self.empty = np.array([len(t) == 0 for t in toks])
        self.bm25 = bm25s.BM25()
        self.bm25.index([t if t else [""] for t in toks], show_progress=False)
        self.vocab = set(self.bm25.vocab_dict) if hasattr(self.bm25, "vocab_dict") else None

    def scores(self, q_terms: list[str]) -> np.ndarray:
        terms = [t for t in q_terms if self.vocab is None or t in self.vocab]
        if not terms:
            return np.zeros(len(self.empty), dtype=np.float64)
        return np.asarray(self.bm25.get_scores(terms), dtype=np.float64)


class LexicalIndex:
    """Catalog-wide lexical state (BM25 per field, term sets, units, types), built once.

    Shared by the offline feature build and request-time features, so both compute identical values.
    """

    def __init__(self, prods: pd.DataFrame) -> None:
        def col(name: str) -> list[object]:
            return list(prods[name]) if name in prods.columns else [None] * len(prods)

        titles, bullets, descs = col("title"), col("bullet_points"), col("description")
        brands, colors, cats = col("brand"), col("color"), col("category")
        self.idx = {"title": _FieldIndex(titles), "bullets": _FieldIndex(bullets), "desc": _FieldIndex(descs)}
        title_tokens = [_folded_tokens(x) for x in titles]
        self.p_title_terms = [set(t) for t in title_tokens]
        self.p_all_terms = [{fold_plural(t) for t in tokenize(" ".join(str(v) for v in vals if isinstance(v, str)))}
                            for vals in zip(titles, bullets, descs, brands, colors, cats)]
        self.p_nu = [number_units(t) | number_units(b) for t, b in zip(titles, bullets)]
        self.p_type = [product_type(c) for c in cats]
        # brand, color and type of each product, tokenised and folded once for every query to come
        self.p_attrs = [tuple(_folded_tokens(v) for v in vals) for vals in zip(brands, colors, self.p_type)]
        self.title_match = TitleMatcher(titles, title_tokens, _folded_tokens, content_terms)

    def features(self, query: str, docs: np.ndarray) -> np.ndarray:
        """(len(docs), len(LEXICAL_FEATURES)) for one query against catalog row positions `docs`."""
        q_tokens = tokenize(query)
        q_terms = content_terms(q_tokens)
        q_nu = number_units(query)
        bm = {k: v.scores(q_terms)[docs] for k, v in self.idx.items()}
        qt = [fold_plural(t) for t in q_tokens]
        qs, folded_terms = set(qt), [fold_plural(t) for t in q_terms]
        out = np.full((len(docs), len(LEXICAL_FEATURES)), np.nan)
        out[:, -_N_TITLE:] = self.title_match.features(query, docs)
        for j, d in enumerate(docs):
            (be, bp), (ce, cp), (te, tp) = (_folded_match(qt, qs, vt) for vt in self.p_attrs[d])
            nm, nc = _num_features(q_nu, self.p_nu[d])
            out[j, :-_N_TITLE] = (
                bm["title"][j], np.nan if self.idx["bullets"].empty[d] else bm["bullets"][j],
                np.nan if self.idx["desc"].empty[d] else bm["desc"][j],
                _coverage(folded_terms, self.p_title_terms[d]), _coverage(folded_terms, self.p_all_terms[d]),
                float(len(q_terms)), be, bp, ce, cp, te, tp, nm, nc,
            )
        return out


def lexical_features(pairs: pd.DataFrame, queries: pd.DataFrame, products: pd.DataFrame,
                     progress: bool = True) -> pd.DataFrame:
    """Lexical features for each (query_id, product_id) pair.

    pairs: query_id, product_id; queries: query_id, query; products: the PRODUCTS table.
    Returns query_id, product_id and LEXICAL_FEATURES (float64), one row per input pair, same order.
    """
    for name, df, cols in (("pairs", pairs, ("query_id", "product_id")), ("queries", queries, ("query_id", "query")),
                           ("products", products, ("product_id", "title"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"lexical_features: {name} lacks column(s) {missing}. Fix: pass a {name} table "
                             f"with columns {list(cols)}.")
    qtext = dict(zip(queries["query_id"], queries["query"]))
    unknown_q = set(pairs["query_id"]) - set(qtext)
    if unknown_q:
        raise ValueError(f"lexical_features: {len(unknown_q)} query_id(s) in pairs are not in queries, e.g. "
                         f"{sorted(unknown_q)[:3]}. Fix: pass the queries table covering every pair.")
    prods = products.drop_duplicates("product_id").reset_index(drop=True)
    pidx = pd.Series(np.arange(len(prods)), index=prods["product_id"])
    unknown_p = set(pairs["product_id"]) - set(pidx.index)
    if unknown_p:
        raise ValueError(f"lexical_features: {len(unknown_p)} product_id(s) in pairs are not in products, e.g. "
                         f"{sorted(unknown_p)[:3]}. Fix: pass the products table covering every pair.")

    index = LexicalIndex(prods)
    out = np.full((len(pairs), len(LEXICAL_FEATURES)), np.nan)
    pos = pidx.loc[pairs["product_id"]].to_numpy()
    groups = pd.Series(np.arange(len(pairs))).groupby(pairs["query_id"].to_numpy())
    for qid, rows in tqdm(groups, total=groups.ngroups, desc="lexical", disable=not progress, leave=False):
        rows = rows.to_numpy()
        out[rows] = index.features(qtext[qid], pos[rows])
    res = pd.DataFrame(out, columns=list(LEXICAL_FEATURES))
    res.insert(0, "product_id", pairs["product_id"].to_numpy())
    res.insert(0, "query_id", pairs["query_id"].to_numpy())
    return res
