"""Scoring (query, product) pairs with a saved cross-encoder: the `ce_score` feature.

Why it looks like this: inference tokenises once, sorts by length and pads each batch only to its own
longest pair, under `torch.inference_mode`; ONNX Runtime (fp32 / int8 dynamic quantisation) is an
optional backend for CPUs. Our segment-cosine head is loaded by class, so no remote code runs; any other
local HF cross-encoder dir scores through `AutoModelForSequenceClassification`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..text import pair_texts
from .artifact import _read_meta, load_scoring_model
from .batching import _collate, _length_batches, _tokenize_pairs

Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8"]


class CrossEncoderScorer:
    """Fast batched scoring with any local cross-encoder dir (ours or another HF one).

    backend: "torch" (fp32, exact), "torch-bf16" (bfloat16 autocast; fast on AMX CPUs),
    "onnx" (ONNX Runtime fp32) or "onnx-int8" (ONNX Runtime, int8 dynamic quantisation).
    activation: "sigmoid" (what sentence-transformers' CrossEncoder.predict returns for 1 label) or "none".
    """

    def __init__(self, path: str | Path, backend: Backend = "torch", max_length: int | None = None,
                 activation: Literal["sigmoid", "none"] = "sigmoid", num_threads: int | None = None,
                 onnx_dir: str | Path | None = None) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"cross-encoder dir {self.path} has no config.json. Fix: pass a directory "
                                    "written by fine_tune_cross_encoder() or any local HF cross-encoder.")
        if backend not in ("torch", "torch-bf16", "onnx", "onnx-int8"):
            raise ValueError(f"backend={backend!r} unknown. Fix: use torch, torch-bf16, onnx or onnx-int8.")
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"activation={activation!r} unknown. Fix: use 'sigmoid' or 'none'.")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.backend, self.activation = backend, activation
        self.meta = _read_meta(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.max_length = int(max_length or self.meta.get("config", {}).get("max_length")
                              or min(int(self.tokenizer.model_max_length), 512))
        self.model = load_scoring_model(self.path)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self._ort = None
        if backend.startswith("onnx"):
            from .onnx_export import ort_session
            self._ort = ort_session(self.path, self.model, quantize=backend == "onnx-int8",
                                    onnx_dir=onnx_dir, num_threads=num_threads or torch.get_num_threads())
            self._ort_inputs = {i.name for i in self._ort.get_inputs()}

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "external"))

    def _forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        if self._ort is not None:
            feeds = {k: v.numpy() for k, v in batch.items() if k in self._ort_inputs}
            return self._ort.run(None, feeds)[0][:, 0].astype(np.float32)
        if self.backend == "torch-bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.model(**batch).logits[:, 0].float().numpy()
        return self.model(**batch).logits[:, 0].float().numpy()

    @torch.inference_mode()
    def score(self, queries: Sequence[str], texts: Sequence[str], batch_size: int = 64,
              progress: bool = False, max_tokens: int | None = None) -> np.ndarray:
        """Scores for queries[i] vs texts[i], float32, in input order."""
        if isinstance(queries, str) or isinstance(texts, str):
            raise TypeError("score() takes lists of queries and texts. Fix: wrap single strings in a list.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        n = len(queries)
        if n == 0:
            if len(texts):
                raise ValueError(f"queries (0) and texts ({len(texts)}) must have the same length.")
            return np.zeros(0, np.float32)
        enc = _tokenize_pairs(self.tokenizer, queries, texts, self.max_length)
        lengths = [len(x) for x in enc["input_ids"]]
        out = np.empty(n, np.float32)
        for idx in tqdm(_length_batches(lengths, batch_size, max_tokens), disable=not progress,
                        desc="cross-encoder", leave=False):
            out[idx] = self._forward(_collate(enc, idx, self.pad_id))
        if self.activation == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out.astype(np.float32)


def score_pairs(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                scorer: CrossEncoderScorer, batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
    """Feature table [query_id, product_id, ce_score] for the (query_id, product_id) rows of `pairs_df`.

    Product text is rendered with the settings the model was trained with (from its metadata).
    """
    tk = {k: v for k, v in scorer.meta.get("text", {}).items()
          if k in ("fields", "max_bullet_chars", "max_description_chars")}
    qs, ts = pair_texts(pairs_df, products_df, queries_df, **tk)
    s = scorer.score(qs, ts, batch_size=batch_size, progress=progress)
    return pd.DataFrame({"query_id": pairs_df["query_id"].astype(str).to_numpy(),
                         "product_id": pairs_df["product_id"].astype(str).to_numpy(),
                         "ce_score": s.astype("float64")})


__all__ = ["Backend", "CrossEncoderScorer", "score_pairs"]
