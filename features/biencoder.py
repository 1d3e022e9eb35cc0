"""Zero-shot bi-encoder cosine: query and product embedded separately, compared by cosine.

Same recipe as sentence-transformers for all-MiniLM-L6-v2 (mean pooling over tokens, then L2
normalisation), done directly with transformers so it runs offline and caches embeddings: a query is
scored against ~40-100 candidates and a product appears under many queries, so each distinct text is
encoded once per `BiEncoder` instance.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ltr.data.models import default_encoder_path

from .text import pair_texts


def _default_max_length(path: Path) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.exists():
        try:
            return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
        except (ValueError, TypeError):  # pragma: no cover - malformed file
            pass
    return 256


class BiEncoder:
    """Mean-pooled, normalised sentence embeddings with an in-memory cache keyed by text."""

    def __init__(self, path: str | Path | None = None, max_length: int | None = None,
                 num_threads: int | None = None, cache_size: int = 200_000) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else default_encoder_path()
        if not self.path.exists():
            raise FileNotFoundError(f"bi-encoder path {self.path} does not exist. Fix: pass a local HF model "
                                    "dir or leave it empty for the default all-MiniLM-L6-v2.")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(str(self.path)).eval()
        self.max_length = int(max_length or _default_max_length(self.path))
        self.cache_size = cache_size
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def _encode_uncached(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        pad = self.tokenizer.pad_token_id or 0
        for s in tqdm(range(0, len(order), batch_size), disable=not progress, desc="bi-encoder", leave=False):
            idx = order[s:s + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(emb, p=2, dim=1).numpy()
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Unit-norm embeddings (n, dim); repeated texts are encoded once and cached."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, got a single str. Fix: wrap it in a list.")
        texts = [str(t) for t in texts]
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            embs = self._encode_uncached(todo, batch_size, progress)
            with self._lock:
                if len(self._cache) + len(todo) > self.cache_size:
                    self._cache.clear()  # simple bound; a cache miss only costs time
                self._cache.update(zip(todo, embs))
                fresh = dict(zip(todo, embs))
        else:
            fresh = {}
        with self._lock:
            return np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts]) if texts \
                else np.zeros((0, self.dim), np.float32)

    def cosine(self, queries: Sequence[str], texts: Sequence[str], batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        """Row-wise cosine of queries[i] vs texts[i]."""
        if len(queries) != len(texts):
            raise ValueError(f"queries ({len(queries)}) and texts ({len(texts)}) must have the same length.")
        q = self.encode(queries, batch_size, progress)
        d = self.encode(texts, batch_size, progress)
        return np.einsum("ij,ij->i", q, d).astype(np.float32)


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
                **text_kwargs) -> pd.DataFrame:
    """Feature table [query_id, product_id, bienc_cos] for the (query_id, product_id) rows of `pairs_df`."""
    qs, ts = pair_texts(pairs_df, products_df, queries_df, **text_kwargs)
    cos = bi_encoder_cosine(qs, ts, batch_size=batch_size, encoder=encoder, progress=progress)
    return pd.DataFrame({"query_id": pairs_df["query_id"].astype(str).to_numpy(),
                         "product_id": pairs_df["product_id"].astype(str).to_numpy(),
                         "bienc_cos": cos.astype("float64")})


__all__ = ["BiEncoder", "bi_encoder_cosine", "default_biencoder", "score_pairs"]
