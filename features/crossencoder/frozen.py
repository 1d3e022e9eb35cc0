"""The frozen bottom of the encoder: freeze it, run it once over all pairs, then train only the top.

Why: on a CPU budget most of a step is the forward pass, and the embeddings plus the bottom layers stay
frozen anyway (cheaper and less forgetting), so their output is the same every epoch. Caching it per row
means later epochs pay only for the trainable top layers and the head. Both heads are covered: the cls
head's pooler features also feed the linear probe, the segment-cosine head needs each row's segments.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .base_model import _is_segment
from .batching import _collate, _length_batches


def _freeze(model, n_layers: int) -> None:
    base = getattr(model, model.base_model_prefix, None)
    if base is None or n_layers <= 0:
        return
    for p in base.embeddings.parameters():
        p.requires_grad_(False)
    layers = base.encoder.layer
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers={n_layers} but the model has {len(layers)} layers. "
                         f"Fix: use 0..{len(layers)}.")
    for layer in layers[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)
    gates = getattr(model, "cross_gate", None)
    n_local = int(getattr(model.config, "segment_local_layers", 0))
    for i, g in enumerate(gates if gates is not None else ()):  # a frozen layer's gate is frozen too
        if n_local + i < n_layers:
            g.requires_grad_(False)


@torch.inference_mode()
def _pooled_features(model, enc: dict[str, list], idx: np.ndarray, pad: int, batch_size: int,
                     progress: bool) -> torch.Tensor:
    """What the classifier sees (pooler output) for rows `idx`, computed once with the encoder frozen."""
    base = getattr(model, model.base_model_prefix)
    sub = {k: [enc[k][i] for i in idx] for k in ("input_ids", "token_type_ids")}
    out = torch.empty((len(idx), model.config.hidden_size))
    for b in tqdm(_length_batches([len(x) for x in sub["input_ids"]], batch_size), disable=not progress,
                  desc="linear probe features", leave=False):
        o = base(**_collate(sub, b, pad))
        out[torch.from_numpy(b)] = (o.pooler_output if o.pooler_output is not None else o.last_hidden_state[:, 0])
    return out


@torch.inference_mode()
def _frozen_states(model, enc: dict[str, list], n_frozen: int, pad: int, batch_size: int,
                   progress: bool) -> tuple[list[torch.Tensor], torch.Tensor | None, list[torch.Tensor] | None]:
    """Per row: hidden states after the frozen bottom (trimmed to the row's length), the pooler output
    (cls head only) and the rows' segments as the layers see them (segment-cosine head only)."""
    base = getattr(model, model.base_model_prefix)
    seg_head = _is_segment(model)
    n = len(enc["input_ids"])
    states: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    segs: list[torch.Tensor] | None = [None] * n if seg_head else None  # type: ignore[list-item]
    pooled = None if seg_head else torch.empty((n, model.config.hidden_size))
    for b in tqdm(_length_batches([len(x) for x in enc["input_ids"]], batch_size), disable=not progress,
                  desc="frozen layers (once)", leave=False):
        batch = _collate(enc, b, pad)
        mask = batch["attention_mask"]
        if seg_head:
            ids, mask, seg, pos = model.layout(batch["input_ids"], mask, batch["token_type_ids"])
            h = model.run_layers(model.embed(ids, seg, pos), mask, seg, 0, n_frozen)
        else:
            o = base(**batch, output_hidden_states=True)
            h = o.hidden_states[n_frozen]
            pooled[torch.from_numpy(b)] = o.pooler_output
        lens = mask.sum(1).tolist()
        for r, i in enumerate(b):
            states[i] = h[r, :lens[r]].clone()
            if segs is not None:
                segs[i] = seg[r, :lens[r]].clone()
    return states, pooled, segs


def _top_forward(model, states: list[torch.Tensor], idx: Sequence[int], n_frozen: int,
                 segments: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits from cached frozen-bottom states: trainable top layers + head only.

    `segments` (per row, as `_frozen_states` returns them) is needed by the segment-cosine head."""
    from transformers.masking_utils import create_bidirectional_mask

    base = getattr(model, model.base_model_prefix)
    rows = [states[i] for i in idx]
    width = max(r.shape[0] for r in rows)
    h = torch.zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, x in enumerate(rows):
        h[r, :x.shape[0]] = x
        mask[r, :x.shape[0]] = 1
    if _is_segment(model):
        if segments is None:
            raise ValueError("the segment-cosine head needs the rows' token_type_ids (segments=).")
        seg = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seg[r, :len(segments[i])] = torch.as_tensor(segments[i])
        h = model.run_layers(h, mask, seg, n_frozen)
        return model.head(h, mask, seg)
    am = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=mask)
    for layer in base.encoder.layer[n_frozen:]:
        h = layer(h, am)
        h = h[0] if isinstance(h, tuple) else h
    return model.classifier(model.dropout(base.pooler(h)))[:, 0]
