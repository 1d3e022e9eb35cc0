"""The bi-encoder's query side in ONNX Runtime: what a new query's first phase waits for.

Why: a query the service has not met is embedded on the request path, before the cross-encoder can start
under the request's deadline. With torch that pass cost 13-17 ms on one AVX2 core (Python dispatch through
~110 modules and small matrix products at ~9 GFLOP/s), with ONNX Runtime's fused graph ~6 ms
(`bench/bench_serving.py`; docs/serving.md); each millisecond saved goes to the cross-encoder.

Only queries: product embeddings still come from the offline build (torch, through the embedding cache),
and the offline feature build and `ltr evaluate` embed queries with torch as before. The recipe is
`ltr.data.encoder.TextEncoder`'s (mean pooling over the attention mask, then L2 normalisation); the two
agree to ~1e-7 per component (tests), far below the float32 steps the trees compare on.

The export (~15 s for MiniLM on 2 cores) is made offline, next to the embedding cache the product embeddings
live in (`export_query_encoder`: `ltr features build`, the main job's bi-encoder stage, the serving
benchmark's setup), keyed by the model's identity (`ltr.data.embedding_cache.model_identity`); a service
finds it there and never exports at start.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltr.data.embedding_cache import model_identity

log = logging.getLogger(__name__)


def query_encoder_file(cache_root: str | Path, model_path: str | Path, max_length: int) -> Path:
    """Where the export for this model and truncation lives under an embedding cache root."""
    return Path(cache_root) / "onnx" / f"{model_identity(model_path, max_length)}.onnx"


def export_query_encoder(bi_encoder: Any, cache_root: str | Path | None) -> Path | None:
    """Export `bi_encoder`'s (a features.biencoder.BiEncoder) transformer for the service, unless done.

    Returns the file, or None when there is no cache root or the export failed: the service then embeds
    queries with torch (and says so in /health), so a model the exporter cannot handle never fails a build."""
    if cache_root is None:
        return None
    path = query_encoder_file(cache_root, bi_encoder.path, bi_encoder.max_length)
    if path.exists():
        return path
    from features.crossencoder.onnx_export import export_onnx
    try:
        return export_onnx(bi_encoder.encoder.model, path, output_name="last_hidden_state")
    except Exception as e:  # noqa: BLE001 - optional speed-up: report it, keep the build going
        log.warning("the bi-encoder's ONNX export failed (%s: %s); services will embed queries with torch",
                    type(e).__name__, e)
        return None


class OnnxQueryEncoder:
    """embed(texts) -> (n, dim) unit-norm float32, as TextEncoder.embed computes them; recent texts memoised.

    One intra-op thread: a request's thread runs it while the cross-encoder's batcher uses the cores for
    other requests' pairs, and a single short sequence is too small a pass to split."""

    def __init__(self, path: str | Path, tokenizer: Any, max_length: int, dim: int, num_threads: int = 1,
                 memo: int = 10_000) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, int(num_threads)), 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.tok, self.max_length, self.dim = Path(path), tokenizer, int(max_length), int(dim)
        self.max_memo = int(memo)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            have = {t: v for t in dict.fromkeys(texts) if (v := self._memo.get(t)) is not None}
        todo = [t for t in dict.fromkeys(texts) if t not in have]
        if todo:
            have.update(zip(todo, self._run(todo)))
            with self._lock:
                self._memo.update((t, have[t]) for t in todo)
                while len(self._memo) > self.max_memo:
                    self._memo.popitem(last=False)
        return np.array([have[t] for t in texts], dtype=np.float32).reshape(len(texts), self.dim)

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self.tok(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        mask = enc["attention_mask"].astype(np.int64)
        (h,) = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                                        "token_type_ids": np.zeros_like(ids)})
        m = mask[..., None].astype(h.dtype)
        e = (h * m).sum(1) / np.clip(m.sum(1), 1, None)
        return (e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


__all__ = ["OnnxQueryEncoder", "export_query_encoder", "query_encoder_file"]
