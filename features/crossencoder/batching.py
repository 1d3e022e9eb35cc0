"""Tokenise (query, text) pairs once, then cut them into length buckets padded only to their own width.

Why: pairs differ a lot in length (a 3-word query with a title vs. one with bullet points), so padding
every batch to `max_length` spends most of a CPU's time on pad tokens; training, validation and the
scorer all batch through these three helpers so they see identical tensors for the same rows.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _tokenize_pairs(tokenizer, queries: Sequence[str], texts: Sequence[str], max_length: int) -> dict[str, list]:
    if len(queries) != len(texts):
        raise ValueError(f"queries ({len(queries)}) and texts ({len(texts)}) must have the same length.")
    return tokenizer(list(map(str, queries)), list(map(str, texts)), truncation="longest_first",
                     max_length=max_length, return_token_type_ids=True)


def _collate(enc: dict[str, list], idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the rows `idx` to their own longest length (no waste beyond the batch)."""
    width = max(len(enc["input_ids"][i]) for i in idx)
    n = len(idx)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    tt = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for r, i in enumerate(idx):
        L = len(enc["input_ids"][i])
        ids[r, :L] = enc["input_ids"][i]
        tt[r, :L] = enc["token_type_ids"][i]
        mask[r, :L] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(tt)}


def _length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut into batches of <= batch_size rows and <= max_tokens."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, cur, width = [], [], 0
    for i in order:
        w = max(width, int(lengths[i]))
        if cur and (len(cur) >= batch_size or (max_tokens and w * (len(cur) + 1) > max_tokens)):
            batches.append(np.asarray(cur))
            cur, w = [], int(lengths[i])
        cur.append(int(i))
        width = w
    if cur:
        batches.append(np.asarray(cur))
    return batches
