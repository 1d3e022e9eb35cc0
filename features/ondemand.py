"""Request-time features for arbitrary (query text, product) pairs: the serving and `evaluate` path.

Everything that does not need history is computed here from the query text and the catalog row, with
the *same* functions the offline build uses, so a pair scores the same online and offline:
  lexical   features.lexical (BM25 per field with IDF over the catalog given here, coverage, matches)
  product   features.product.product_features
  bi-encoder cosine (bienc_cos)  features.biencoder.BiEncoder on features.text.product_text
  cross-encoder score (ce_score) features.crossencoder.CrossEncoderScorer, behind an LRU cache keyed by
            (query, hash of the product text the model sees): re-ranking the same query re-pays nothing.
Engagement needs history, so it is never computed here: it comes from the online store, or is NaN.

Why a class and not `lexical_features(...)` per request: that function indexes the whole catalog with
BM25 on every call (~hundreds of ms for a few thousand products); here the catalog state (BM25
indexes, token sets, product features, rendered texts) is built once, lazily, and only for the feature
families a model actually uses. `tests/test_evaluate.py` checks that the values equal `lexical_features`.
"""
from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ltr.data.dataset import complete_products
from ltr.data.schemas import query_id

from . import lexical as L
from .names import CONTENT
from .product import PRODUCT_FEATURES, product_features
from .text import product_text

CE_FEATURE, BIENC_FEATURE = CONTENT  # declared in features/names.py
FAMILIES: dict[str, tuple[str, ...]] = {
    "lexical": tuple(L.LEXICAL_FEATURES),
    "product": tuple(PRODUCT_FEATURES),
    "bienc": (BIENC_FEATURE,),
    "ce": (CE_FEATURE,),
}
ONDEMAND_FEATURES: tuple[str, ...] = tuple(f for fs in FAMILIES.values() for f in fs)
_FAMILY_OF = {f: fam for fam, fs in FAMILIES.items() for f in fs}


class OnDemandError(ValueError):
    """Bad input to on-demand feature computation; the message names the field and the fix."""


ENGAGEMENT_PREFIXES = ("eng_qp_", "eng_p_")
QUERY_BACKENDS = ("torch", "onnx", "auto")


def is_engagement(feature: str) -> bool:
    """Engagement features need an impression log: served from the online store, else NaN."""
    return feature.startswith(ENGAGEMENT_PREFIXES)


def family_of(feature: str) -> str | None:
    """'lexical' | 'product' | 'bienc' | 'ce' for a request-time feature, None for anything else."""
    return _FAMILY_OF.get(feature)


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class LRUCache:
    """A small thread-safe LRU map with hit/miss counters (exported as service metrics)."""

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 0:
            raise OnDemandError(f"cache size must be >= 0, got {maxsize}. Fix: pass ce_cache_size >= 0.")
        self.maxsize = maxsize
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        return self.get_many((key,))[0]

    def put(self, key, value) -> None:
        self.put_many([(key, value)])

    def get_many(self, keys) -> list:
        """get() of each key under one lock (a request's candidates at once); None where absent."""
        out, hits = [], 0
        with self._lock:
            d = self._d
            for k in keys:
                v = d.get(k)
                if v is not None:
                    d.move_to_end(k)
                    hits += 1
                out.append(v)
            self.hits, self.misses = self.hits + hits, self.misses + len(out) - hits
        return out

    def put_many(self, items) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            for key, value in items:
                self._d[key] = value
                self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)





class OnDemandFeatures:
    """Request-time features over one catalog.

    products: the PRODUCTS table; it *is* the BM25 corpus, so pass the same catalog the offline
    features were built on. cross_encoder / bi_encoder: a model dir or a loaded
    CrossEncoderScorer / BiEncoder; None means that feature cannot be computed (bi_encoder="default"
    loads all-MiniLM-L6-v2 on first use). ce_backend: CrossEncoderScorer's backend (torch, torch-bf16,
    onnx, onnx-int8) when cross_encoder is a path. embedding_cache: an embedding cache root
    (ltr.data.embedding_cache) the bi-encoder reads product embeddings from and adds to. query_backend: how
    the bi-encoder embeds queries: "torch" (as the offline build), "onnx" (ONNX Runtime from the export
    under `embedding_cache`, features/query_encoder.py; an error without one) or "auto" (onnx when the export
    is there). Heavy state is built lazily, per feature family.
    """

    def __init__(self, products: pd.DataFrame, cross_encoder=None, bi_encoder=None,
                 ce_cache_size: int = 100_000, batch_size: int = 64, ce_backend: str = "torch",
                 embedding_cache: str | Path | None = None, query_backend: str = "torch") -> None:
        if query_backend not in QUERY_BACKENDS:
            raise OnDemandError(f"query_backend {query_backend!r} is not one of {QUERY_BACKENDS}. Fix: pick one.")
        if not isinstance(products, pd.DataFrame):
            raise OnDemandError(f"products must be a DataFrame (the PRODUCTS table), got {type(products).__name__}."
                                " Fix: pass pd.read_parquet('DATASET/products.parquet').")
        # a catalog as it comes: absent optional columns become missing values, as in the offline build
        self.products = complete_products(products, where="on-demand features catalog")
        if self.products.empty:
            raise OnDemandError("products is empty. Fix: pass the catalog the candidates come from.")
        # product id -> catalog row, a plain dict: 100 lookups cost ~20 us, a pandas indexer ~0.5 ms a request
        self._row = {str(p): i for i, p in enumerate(self.products["product_id"])}
        self._ce_src, self._bi_src = cross_encoder, bi_encoder
        self._ce = self._bi = None
        self._lex: L.LexicalIndex | None = None
        self._prod: np.ndarray | None = None
        self._ce_texts: dict[int, tuple[str, str]] = {}
        self._bi_text: dict[int, str] = {}
        self.ce_cache = LRUCache(ce_cache_size)
        self.lex_cache = LRUCache(ce_cache_size)
        self.batch_size = batch_size
        self.ce_backend = ce_backend
        self.embedding_cache = embedding_cache
        self.query_backend = query_backend  # asked for; `bi_encoder_queries` says what runs
        self._lock = threading.RLock()

    def with_cross_encoder(self, cross_encoder, backend: str | None = None) -> OnDemandFeatures:
        """A copy that shares this catalog's built state (BM25 indexes, product features, bi-encoder and its
        embeddings) but scores with another cross-encoder (on `backend`, default this one's), behind an empty
        cache: what a model reload needs (a new version may carry a new cross-encoder; its scores must not
        come from the old one's cache)."""
        new = copy.copy(self)
        new._ce_src, new._ce, new._ce_texts = cross_encoder, None, {}
        new.ce_backend = backend or self.ce_backend
        new.ce_cache = LRUCache(self.ce_cache.maxsize)
        new._lock = threading.RLock()
        return new

    # -- what can be computed ---------------------------------------------------------------------------
    @property
    def has_cross_encoder(self) -> bool:
        return self._ce_src is not None

    @property
    def has_bi_encoder(self) -> bool:
        return self._bi_src is not None

    def available(self, features: Iterable[str] | None = None) -> list[str]:
        """The subset of `features` (default: all request-time ones) this instance can compute."""
        out = []
        for f in (ONDEMAND_FEATURES if features is None else features):
            fam = family_of(f)
            if fam in ("lexical", "product") or (fam == "ce" and self.has_cross_encoder) or \
                    (fam == "bienc" and self.has_bi_encoder):
                out.append(f)
        return out

    def warm(self, features: Iterable[str] | None = None) -> None:
        """Build the state (indexes, models) for `features` now instead of on the first request."""
        fams = {family_of(f) for f in self.available(features)}
        if "lexical" in fams:
            self._lexical()
        if "product" in fams:
            self._product()
        if "ce" in fams:
            self._cross_encoder()
        if "bienc" in fams:
            self._bi_encoder()

    def precompute_product_embeddings(self, progress: bool = True) -> int:
        """Embed every catalog product with the bi-encoder now (its cache keeps them), so a request only
        embeds its query; returns the number of products. Costs startup time, saves most of a cold request."""
        if not self.has_bi_encoder:
            return 0
        bi = self._bi_encoder()
        texts = []
        for d in range(len(self.products)):
            if d not in self._bi_text:
                self._bi_text[d] = product_text(self.products.iloc[d])
            texts.append(self._bi_text[d])
        bi.encode(texts, batch_size=self.batch_size, progress=progress)
        return len(texts)

    # -- lazy state --------------------------------------------------------------------------------------
    def _lexical(self) -> L.LexicalIndex:
        with self._lock:
            if self._lex is None:
                self._lex = L.LexicalIndex(self.products)
            return self._lex

    def _product(self) -> np.ndarray:
        with self._lock:
            if self._prod is None:
                pf = product_features(self.products)
                self._prod = pf[list(PRODUCT_FEATURES)].to_numpy(np.float64)
            return self._prod

    def _cross_encoder(self):
        with self._lock:
            if self._ce is None:
                from .crossencoder import CrossEncoderScorer
                src = self._ce_src
                self._ce = (src if isinstance(src, CrossEncoderScorer)
                            else CrossEncoderScorer(Path(src), backend=self.ce_backend))
            return self._ce

    def _bi_encoder(self):
        with self._lock:
            if self._bi is None:
                from .biencoder import BiEncoder, default_biencoder
                src = self._bi_src
                self._bi = (src if isinstance(src, BiEncoder) else
                            default_biencoder() if str(src) == "default" else BiEncoder(Path(src)))
                if self.embedding_cache is not None:  # product embeddings the offline build stored are read
                    self._bi = self._bi.cached(self.embedding_cache)
                if self.query_backend != "torch":
                    self._bi = self._onnx_queries(self._bi)
            return self._bi

    def _onnx_queries(self, bi):
        fast = bi.with_onnx_queries(self.embedding_cache)
        if fast is None and self.query_backend == "onnx":
            raise OnDemandError("query_backend 'onnx' needs the bi-encoder's ONNX export under the embedding cache "
                                f"({'none given' if self.embedding_cache is None else 'none found there'}). Fix: "
                                "run `ltr features build` (it exports it), or use query_backend 'auto' or 'torch'.")
        return fast or bi

    @property
    def bi_encoder_queries(self) -> str | None:
        """How queries are embedded now: 'onnx' | 'torch' (None: no bi-encoder, or not loaded yet)."""
        if self._bi is None:
            return None
        return "onnx" if self._bi.query_encoder is not None else "torch"

    # -- computing ---------------------------------------------------------------------------------------
    def positions(self, product_ids: Sequence[str], field: str = "product_ids") -> np.ndarray:
        """Catalog rows of `product_ids`; unknown ids raise naming a few of them."""
        row = self._row
        idx = np.fromiter((row.get(str(p), -1) for p in product_ids), dtype=np.int64, count=len(product_ids))
        if (idx < 0).any():
            bad = list(dict.fromkeys(str(p) for p, i in zip(product_ids, idx) if i < 0))
            raise OnDemandError(f"{field}: {len(bad)} product id(s) not in the catalog, e.g. {bad[:5]}. "
                                "Fix: pass ids of products in the catalog the service was started with.")
        return idx

    def _ce_text(self, d: int) -> tuple[str, str]:
        """(text the cross-encoder reads, its hash) of catalog row d, rendered once."""
        if d not in self._ce_texts:
            tk = {k: v for k, v in self._cross_encoder().meta.get("text", {}).items()
                  if k in ("fields", "max_bullet_chars", "max_description_chars")}
            t = product_text(self.products.iloc[d], **tk)
            self._ce_texts[d] = (t, _text_hash(t))
        return self._ce_texts[d]

    def ce_lookup(self, query: str, docs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Cached cross-encoder scores of (query, docs) (NaN where not cached) and the texts to score the
        rest: how the service splits a request into free pairs and work for the cross-encoder."""
        out = np.full(len(docs), np.nan)
        texts = []
        for i, d in enumerate(docs):
            t, h = self._ce_text(int(d))
            texts.append(t)
            hit = self.ce_cache.get((query, h))
            if hit is not None:
                out[i] = hit
        return out, texts

    def ce_score_texts(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Cross-encoder scores of already rendered (query, text) pairs, uncached: the service's batcher."""
        return self._cross_encoder().score(list(queries), list(texts), batch_size=max(1, len(texts)),
                                           progress=False).astype(np.float64)

    def ce_remember(self, query: str, docs: np.ndarray, scores: np.ndarray) -> None:
        """Put scores computed elsewhere (the service's batcher) into the cache; NaN (not scored) is skipped."""
        for d, v in zip(docs, scores):
            if np.isfinite(v):
                self.ce_cache.put((query, self._ce_text(int(d))[1]), float(v))

    def _ce_scores(self, queries: Sequence[str], docs: np.ndarray, progress: bool) -> np.ndarray:
        out = np.empty(len(docs), np.float64)
        todo: dict[tuple[str, str], list[int]] = {}
        texts: dict[tuple[str, str], str] = {}
        for i, (q, d) in enumerate(zip(queries, docs)):
            t, h = self._ce_text(int(d))
            key = (q, h)
            hit = self.ce_cache.get(key)
            if hit is None:
                todo.setdefault(key, []).append(i)
                texts[key] = t
            else:
                out[i] = hit
        if todo:
            keys = list(todo)
            s = self._cross_encoder().score([k[0] for k in keys], [texts[k] for k in keys],
                                            batch_size=self.batch_size, progress=progress)
            for k, v in zip(keys, s.astype(np.float64)):
                self.ce_cache.put(k, float(v))
                out[todo[k]] = v
        return out

    def _bienc(self, queries: Sequence[str], docs: np.ndarray, progress: bool) -> np.ndarray:
        bi = self._bi_encoder()
        texts = []
        for d in docs:
            d = int(d)
            if d not in self._bi_text:
                self._bi_text[d] = product_text(self.products.iloc[d])
            texts.append(self._bi_text[d])
        return bi.cosine(list(queries), texts, batch_size=self.batch_size, progress=progress).astype(np.float64)

    def _lexical_one_query(self, query: str, docs: np.ndarray) -> np.ndarray:
        """Lexical rows of one query's candidates behind a (query, product) cache: a query seen again (the
        head of the traffic) costs lookups instead of ~10 ms of tokenising and matching."""
        rows = [self.lex_cache.get((query, int(d))) for d in docs]
        todo = np.array([i for i, r in enumerate(rows) if r is None], dtype=np.int64)
        if len(todo):
            fresh = self._lexical().features(query, docs[todo])
            for i, row in zip(todo, fresh):
                rows[i] = row
                self.lex_cache.put((query, int(docs[i])), row)
        return np.array(rows)

    def family_values(self, family: str, queries: Sequence[str], docs: np.ndarray,
                      progress: bool = False) -> np.ndarray:
        """(len(docs), len(FAMILIES[family])) float matrix for one feature family: the one computation that
        `compute` (a table) and the service (a matrix, no frame per request) share."""
        n = len(docs)
        if family == "lexical":
            lex = self._lexical()
            mat = np.full((n, len(L.LEXICAL_FEATURES)), np.nan)
            if n and all(q == queries[0] for q in queries):  # the serving case: one query, no grouping
                return self._lexical_one_query(queries[0], docs)
            groups = pd.Series(np.arange(n)).groupby(np.asarray(queries, dtype=object), sort=False)
            for _, rows in tqdm(groups, total=groups.ngroups, desc="lexical", disable=not progress, leave=False):
                r = rows.to_numpy()
                mat[r] = lex.features(queries[r[0]], docs[r])
            return mat
        if family == "product":
            return self._product()[docs] if n else np.zeros((0, len(PRODUCT_FEATURES)))
        if family == "bienc":
            return (self._bienc(queries, docs, progress) if n else np.zeros(0))[:, None]
        if family == "ce":
            return (self._ce_scores(queries, docs, progress) if n else np.zeros(0))[:, None]
        raise OnDemandError(f"unknown feature family {family!r}. Fix: use one of {sorted(FAMILIES)}.")

    def compute(self, pairs: pd.DataFrame, features: Iterable[str] | None = None,
                progress: bool = False) -> pd.DataFrame:
        """Features for each row of `pairs` (columns `query` text and `product_id`), in input order.

        Returns query_id, product_id and the requested request-time features that can be computed
        (see `available`); requested names outside ONDEMAND_FEATURES are ignored (the caller fills them
        from the online store or leaves them NaN).
        """
        if not isinstance(pairs, pd.DataFrame):
            raise OnDemandError("pairs must be a DataFrame with columns query, product_id; "
                                f"got {type(pairs).__name__}.")
        missing = [c for c in ("query", "product_id") if c not in pairs.columns]
        if missing:
            raise OnDemandError(f"pairs lacks column(s) {missing}. Fix: pass one row per (query text, product_id).")
        queries = [str(q) for q in pairs["query"]]
        if any(not q.strip() for q in queries):
            raise OnDemandError("pairs.query has empty query text. Fix: drop rows without a query.")
        want = self.available(features)
        docs = self.positions(pairs["product_id"], field="pairs.product_id")
        out: dict[str, np.ndarray] = {"query_id": np.array([query_id(q) for q in queries], dtype=object),
                                      "product_id": np.array([str(p) for p in pairs["product_id"]], dtype=object)}
        for fam in dict.fromkeys(family_of(f) for f in want):
            mat = self.family_values(fam, queries, docs, progress)
            for j, f in enumerate(FAMILIES[fam]):
                out[f] = mat[:, j]
        df = pd.DataFrame(out)
        return df[["query_id", "product_id"] + [f for f in want if f in df.columns]]

__all__ = [
    "BIENC_FEATURE",
    "CE_FEATURE",
    "FAMILIES",
    "ONDEMAND_FEATURES",
    "LRUCache",
    "OnDemandError",
    "OnDemandFeatures",
    "family_of",
    "is_engagement",
]
