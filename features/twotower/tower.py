"""The shared tower (query and product go through the same encoder), trainable on top of a frozen bottom.

Why a cache: on a CPU budget most of a step is the forward pass, and the embeddings and bottom layers stay
frozen (cheaper, and with a few dozen training queries less forgetting), so their output for a given text
never changes. `BottomCache` runs them once per distinct text and keeps the states; training and scoring
then pay only for the top layers. One cache can serve several towers (every fold and arm of a benchmark)
as long as they share base weights, frozen depth and token budget, which `Tower` checks.

Pooling is the all-MiniLM-L6-v2 recipe (mean over tokens, L2-normalised), as in `ltr.data.encoder`, so a
saved tower is read by `features.biencoder.BiEncoder` unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of the token states under the attention mask."""
    m = mask[..., None].to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[0] for r in rows)
    h = torch.zeros((len(rows), width, rows[0].shape[1]), dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        h[i, :r.shape[0]] = r
        mask[i, :r.shape[0]] = 1
    return h, mask


def _length_batches(lengths: Sequence[int], size: int) -> list[np.ndarray]:
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[s:s + size] for s in range(0, len(order), size)]


class BottomCache:
    """Token ids and frozen-bottom states per distinct text, for one (base model, depth, token budget)."""

    def __init__(self, model, tok, n_frozen: int, max_length: int, key: str) -> None:
        self.model, self.tok, self.n_frozen, self.max_length, self.key = model, tok, n_frozen, max_length, key
        self.ids: dict[str, list[int]] = {}
        self.states: dict[str, torch.Tensor] = {}

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if t not in self.ids]
        if new:
            enc = self.tok(new, truncation=True, max_length=self.max_length)["input_ids"]
            self.ids.update(zip(new, enc))
        return [self.ids[t] for t in texts]

    @torch.inference_mode()
    def warm(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> None:
        """Run the frozen bottom over every text not cached yet (length-sorted batches, own padding)."""
        if self.n_frozen == 0:
            self.token_ids(texts)
            return
        new = [t for t in dict.fromkeys(texts) if t not in self.states]
        if not new:
            return
        ids = self.token_ids(new)
        was_training = self.model.training
        self.model.eval()
        for b in tqdm(_length_batches([len(x) for x in ids], batch_size), disable=not progress,
                      desc="frozen layers (once per text)", leave=False):
            enc = self.tok.pad({"input_ids": [ids[i] for i in b]}, return_tensors="pt")
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             output_hidden_states=True)
            h = out.hidden_states[self.n_frozen]
            for r, i in enumerate(b):
                self.states[new[i]] = h[r, :len(ids[i])].clone()
        self.model.train(was_training)


class Tower:
    """A sentence encoder whose bottom `n_frozen` layers (and embeddings) are frozen."""

    def __init__(self, model, tok, n_frozen: int, max_length: int, cache: BottomCache | None = None,
                 use_cache: bool = True, key: str = "") -> None:
        layers = model.encoder.layer
        if n_frozen > len(layers):
            raise ValueError(f"freeze_layers={n_frozen} but the model has {len(layers)} layers. "
                             f"Fix: use 0..{len(layers)}.")
        self.model, self.tok, self.n_frozen, self.max_length = model, tok, n_frozen, max_length
        if n_frozen:
            for p in model.embeddings.parameters():
                p.requires_grad_(False)
            for layer in layers[:n_frozen]:
                for p in layer.parameters():
                    p.requires_grad_(False)
        self.use_cache = bool(use_cache and n_frozen > 0)
        if cache is not None and (cache.n_frozen, cache.max_length, cache.key) != (n_frozen, max_length, key):
            raise ValueError(f"the bottom cache was built for (freeze_layers, max_length, base) = "
                             f"({cache.n_frozen}, {cache.max_length}, {cache.key}), this tower is "
                             f"({n_frozen}, {max_length}, {key}). Fix: build a cache for this tower.")
        self.cache = cache or BottomCache(model, tok, n_frozen if self.use_cache else 0, max_length, key)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) unit-norm embeddings, differentiable through the trainable layers."""
        if self.use_cache:
            from transformers.masking_utils import create_bidirectional_mask

            self.cache.warm(texts)
            h, mask = _pad([self.cache.states[t] for t in texts])
            am = create_bidirectional_mask(config=self.model.config, inputs_embeds=h, attention_mask=mask)
            for layer in self.model.encoder.layer[self.n_frozen:]:
                h = layer(h, am)
                h = h[0] if isinstance(h, tuple) else h
            return mean_pool(h, mask)
        ids = self.cache.token_ids(texts)
        enc = self.tok.pad({"input_ids": ids}, return_tensors="pt")
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return mean_pool(out, enc["attention_mask"])

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit-norm embeddings in eval mode; each distinct text encoded once."""
        was_training = self.model.training
        self.model.eval()
        uniq = list(dict.fromkeys(texts))
        if self.use_cache:
            self.cache.warm(uniq, batch_size, progress)
        lens = [len(x) for x in self.cache.token_ids(uniq)]
        out = np.empty((len(uniq), self.model.config.hidden_size), np.float32)
        for b in tqdm(_length_batches(lens, batch_size), disable=not progress, desc="two-tower encode",
                      leave=False):
            out[b] = self.forward([uniq[i] for i in b]).float().numpy()
        self.model.train(was_training)
        pos = {t: i for i, t in enumerate(uniq)}
        return out[[pos[t] for t in texts]] if len(texts) else out[:0]


def load_tower(path: str | Path, n_frozen: int, max_length: int, cache: BottomCache | None = None,
               use_cache: bool = True, key: str | None = None) -> Tower:
    """A tower on the weights at `path` (a base bi-encoder or a saved two-tower dir)."""
    from transformers import AutoModel, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p} is not a model directory (no config.json). Fix: pass a local HF "
                                "bi-encoder dir or leave base_model empty for all-MiniLM-L6-v2.")
    tok = AutoTokenizer.from_pretrained(str(p))
    model = AutoModel.from_pretrained(str(p))
    return Tower(model, tok, n_frozen, max_length, cache, use_cache, key if key is not None else str(p.resolve()))


def bottom_cache(path: str | Path, n_frozen: int, max_length: int) -> BottomCache:
    """An empty cache on the base weights at `path`, to share across towers trained from it."""
    from transformers import AutoModel, AutoTokenizer

    p = Path(path)
    return BottomCache(AutoModel.from_pretrained(str(p)), AutoTokenizer.from_pretrained(str(p)), n_frozen,
                       max_length, str(p.resolve()))


__all__ = ["BottomCache", "Tower", "bottom_cache", "load_tower", "mean_pool"]
