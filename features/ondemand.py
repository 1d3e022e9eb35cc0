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
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
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
    onnx, onnx-int8) when cross_encoder is a path. Heavy state is built lazily, per feature family.
    """

    def __init__(self, products: pd.DataFrame, cross_encoder=None, bi_encoder=None,
                 ce_cache_size: int = 100_000, batch_size: int = 64, ce_backend: str = "torch") -> None:
        if not isinstance(products, pd.DataFrame):
            raise OnDemandError(f"products must be a DataFrame (the PRODUCTS table), got {type(products).__name__}."
                                " Fix: pass pd.read_parquet('DATASET/products.parquet').")
        # a catalog as it comes: absent optional columns become missing values, as in the offline build
        self.products = complete_products(products, where="on-demand features catalog")
        if self.products.empty:
            raise OnDemandError("products is empty. Fix: pass the catalog the candidates come from.")
        self.pos = pd.Series(np.arange(len(self.products)), index=pd.Index(self.products["product_id"]))
        self._ce_src, self._bi_src = cross_encoder, bi_encoder
        self._ce = self._bi = None
        self._lex: L.LexicalIndex | None = None
        self._prod: np.ndarray | None = None
        self._ce_text: dict[int, tuple[str, str]] = {}
        self._bi_text: dict[int, str] = {}
        self.ce_cache = LRUCache(ce_cache_size)
        self.batch_size = batch_size
        self.ce_backend = ce_backend
        self._lock = threading.RLock()

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
            return self._bi

    # -- computing ---------------------------------------------------------------------------------------
    def positions(self, product_ids: Sequence[str], field: str = "product_ids") -> np.ndarray:
        """Catalog rows of `product_ids`; unknown ids raise naming a few of them."""
        ids = pd.Index([str(p) for p in product_ids])
        idx = self.pos.index.get_indexer(ids)
        if (idx < 0).any():
            bad = list(dict.fromkeys(ids[idx < 0]))
            raise OnDemandError(f"{field}: {len(bad)} product id(s) not in the catalog, e.g. {bad[:5]}. "
                                "Fix: pass ids of products in the catalog the service was started with.")
        return self.pos.to_numpy()[idx]

    def _ce_scores(self, queries: Sequence[str], docs: np.ndarray, progress: bool) -> np.ndarray:
        ce = self._cross_encoder()
        tk = {k: v for k, v in ce.meta.get("text", {}).items()
              if k in ("fields", "max_bullet_chars", "max_description_chars")}
        out = np.empty(len(docs), np.float64)
        todo: dict[tuple[str, str], list[int]] = {}
        texts: dict[tuple[str, str], str] = {}
        for i, (q, d) in enumerate(zip(queries, docs)):
            d = int(d)
            if d not in self._ce_text:
                t = product_text(self.products.iloc[d], **tk)
                self._ce_text[d] = (t, _text_hash(t))
            t, h = self._ce_text[d]
            key = (q, h)
            hit = self.ce_cache.get(key)
            if hit is None:
                todo.setdefault(key, []).append(i)
                texts[key] = t
            else:
                out[i] = hit
        if todo:
            keys = list(todo)
            s = ce.score([k[0] for k in keys], [texts[k] for k in keys], batch_size=self.batch_size,
                         progress=progress)
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
        fams = {family_of(f) for f in want}
        n = len(pairs)
        if "lexical" in fams:
            lex = self._lexical()
            mat = np.full((n, len(L.LEXICAL_FEATURES)), np.nan)
            groups = pd.Series(np.arange(n)).groupby(out["query_id"], sort=False)
            for _, rows in tqdm(groups, total=groups.ngroups, desc="lexical", disable=not progress, leave=False):
                r = rows.to_numpy()
                mat[r] = lex.features(queries[r[0]], docs[r])
            for j, f in enumerate(L.LEXICAL_FEATURES):
                out[f] = mat[:, j]
        if "product" in fams:
            pm = self._product()[docs] if n else np.zeros((0, len(PRODUCT_FEATURES)))
            for j, f in enumerate(PRODUCT_FEATURES):
                out[f] = pm[:, j]
        if "bienc" in fams:
            out[BIENC_FEATURE] = self._bienc(queries, docs, progress) if n else np.zeros(0)
        if "ce" in fams:
            out[CE_FEATURE] = self._ce_scores(queries, docs, progress) if n else np.zeros(0)
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
