"""Zero-shot bi-encoder cosine: query and product embedded separately, compared by cosine.

Same recipe as sentence-transformers for all-MiniLM-L6-v2 (mean pooling over tokens, then L2
normalisation), done by `ltr.data.encoder.TextEncoder` so it runs offline and caches embeddings: a query is
scored against ~40-100 candidates and a product appears under many queries, so each distinct text is
encoded once per `BiEncoder` instance. With a disk cache (`BiEncoder.cached(root)`, `score_pairs(...,
cache_dir=...)`; `ltr.data.embedding_cache`) each distinct text is encoded once per model across stages and
runs, in chunks whose embeddings are stored as they finish, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ltr.data.embedding_cache import EmbeddingCache, embed_cached, model_identity
from ltr.data.encoder import TextEncoder, default_encoder_path, row_cosine

from .text import pair_texts

if TYPE_CHECKING:
    from .query_encoder import OnnxQueryEncoder


def _default_max_length(path: Path) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.exists():
        try:
            return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
        except (ValueError, TypeError):  # pragma: no cover - malformed file
            pass
    return 256


class BiEncoder:
    """Zero-shot cosine on one `ltr.data.encoder.TextEncoder` (the grader's encoder code): texts are
    truncated at `max_length`, encoded once per instance and memoised."""

    def __init__(self, path: str | Path | None = None, max_length: int | None = None,
                 num_threads: int | None = None, cache_size: int = 200_000) -> None:
        self.path = Path(path) if path is not None else default_encoder_path()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.encoder = TextEncoder(self.path, max_memo=cache_size)
        self.max_length = int(max_length or _default_max_length(self.path))
        self.disk_cache: EmbeddingCache | None = None
        self.chunk_texts = 8192
        self.query_encoder: OnnxQueryEncoder | None = None  # queries in ONNX Runtime (with_onnx_queries)

    def cached(self, root: str | Path, chunk_texts: int = 8192) -> BiEncoder:
        """This encoder (same model, same in-memory memo) reading and writing embeddings under `root`.

        Texts missing from the cache are embedded `chunk_texts` at a time, each chunk stored as it finishes.
        The default chunk holds a whole default-world catalog, so its batches, hence its bits, are those of
        an uncached run."""
        other = copy.copy(self)
        other.disk_cache = EmbeddingCache(root, model_identity(self.path, self.max_length), self.dim)
        other.chunk_texts = int(chunk_texts)
        return other

    def with_onnx_queries(self, cache_root: str | Path | None) -> BiEncoder | None:
        """This encoder with queries embedded by ONNX Runtime from the export under `cache_root`
        (features/query_encoder.py), or None when there is none. Products are unchanged."""
        from .query_encoder import OnnxQueryEncoder, query_encoder_file
        path = query_encoder_file(cache_root, self.path, self.max_length) if cache_root is not None else None
        if path is None or not path.exists():
            return None
        other = copy.copy(self)
        other.query_encoder = OnnxQueryEncoder(path, self.encoder.tok, self.max_length, self.dim)
        return other

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def n_cached(self) -> int:
        """Texts embedded and kept (what a warm-up such as precomputed product embeddings leaves behind)."""
        return self.encoder.n_memoised

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
               on_chunk: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Unit-norm embeddings (n, dim); repeated texts are encoded once and cached (on disk too, when cached).

        on_chunk(done, total): called after each chunk of new embeddings is stored (disk cache only)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, got a single str. Fix: wrap it in a list.")
        texts = [str(t) for t in texts]
        if self.disk_cache is None:
            return self.encoder.embed(texts, self.max_length, batch_size, progress, "bi-encoder")
        # the memo first: a service asks for the same products on every request, and reading the disk
        # cache's shards each time cost ~50 ms of a 100-candidate request
        have = self.encoder.memoised(texts, self.max_length)
        rest = [t for t in dict.fromkeys(texts) if t not in have]
        if rest:
            got = embed_cached(lambda part: self.encoder.embed(part, self.max_length, batch_size, progress,
                                                               "bi-encoder"),
                               rest, self.disk_cache, self.chunk_texts, on_chunk)
            self.encoder.remember(rest, got, self.max_length)
            have.update(zip(rest, got))
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.array([have[t] for t in texts])

    def cosine(self, queries: Sequence[str], texts: Sequence[str], batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        """Row-wise cosine of queries[i] vs texts[i]. Queries are memoised but never put in the disk cache:
        they are short and cheap to embed, and a service would otherwise write (and then scan) a shard for
        every new query it meets; the products are the expensive, reusable side."""
        if len(queries) != len(texts):
            raise ValueError(f"queries ({len(queries)}) and texts ({len(texts)}) must have the same length.")
        # each distinct query embedded (or looked up) once, then repeated: a request is one query 100 times
        queries = [str(t) for t in queries]
        pos = {t: i for i, t in enumerate(dict.fromkeys(queries))}
        if not queries:
            q = np.zeros((0, self.dim), np.float32)
        elif self.query_encoder is not None:
            q = self.query_encoder.embed(list(pos))
        else:
            q = self.encoder.embed(list(pos), self.max_length, batch_size, progress, "bi-encoder")
        q = q[[pos[t] for t in queries]]
        d = self.encode(texts, batch_size, progress)
        return row_cosine(q, d).astype(np.float32)


_DEFAULT: BiEncoder | None = None


# Feature computation truncates product text at 128 tokens (the title, brand, color, category and the
# start of the bullets fit): ~2x faster than the model's 256 on long catalog text, and offline features
# and request-time features both go through `default_biencoder`, so they stay identical.
FEATURE_MAX_LENGTH = 128


def default_biencoder() -> BiEncoder:
    """A process-wide BiEncoder on the default weights, so its cache is shared."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = BiEncoder(max_length=FEATURE_MAX_LENGTH)
    return _DEFAULT


def bi_encoder_cosine(queries: Sequence[str], texts: Sequence[str], batch_size: int = 64,
                      encoder: BiEncoder | None = None, progress: bool = False) -> np.ndarray:
    """Zero-shot cosine similarity of each (query, text) pair, float32 in [-1, 1]."""
    return (encoder or default_biencoder()).cosine(queries, texts, batch_size, progress)


def score_pairs(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                encoder: BiEncoder | None = None, batch_size: int = 64, progress: bool = False,
                cache_dir: str | Path | None = None, **text_kwargs) -> pd.DataFrame:
    """Feature table [query_id, product_id, bienc_cos] for the (query_id, product_id) rows of `pairs_df`.

    cache_dir: an embedding cache root (`ltr.data.embedding_cache.default_cache_dir()` for the machine's):
    texts embedded by any earlier stage or run with the same model are read, not encoded again."""
    qs, ts = pair_texts(pairs_df, products_df, queries_df, **text_kwargs)
    encoder = encoder or default_biencoder()
    if cache_dir is not None:
        encoder = encoder.cached(cache_dir)
    cos = bi_encoder_cosine(qs, ts, batch_size=batch_size, encoder=encoder, progress=progress)
    return pd.DataFrame({"query_id": pairs_df["query_id"].astype(str).to_numpy(),
                         "product_id": pairs_df["product_id"].astype(str).to_numpy(),
                         "bienc_cos": cos.astype("float64")})


__all__ = ["BiEncoder", "bi_encoder_cosine", "default_biencoder", "score_pairs"]
