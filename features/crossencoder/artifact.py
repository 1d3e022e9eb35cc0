"""The saved cross-encoder's on-disk format: a Hugging Face sequence-classifier dir plus `META_FILE`.

Why one place: the trainer writes it, the scorer (and serving, through the MLflow `cross_encoder/`
artifact) reads it, and sentence-transformers must load it unchanged, so the file names, the metadata
version and the crash-safe write must agree on both sides.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ltr.data.atomic import atomic_dir

from .base_model import _is_segment

META_FILE = "ltr_cross_encoder.json"
FORMAT_VERSION = 1


def _read_meta(path: Path) -> dict[str, Any]:
    p = path / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def load_scoring_model(path: Path):
    """The 1-output sequence classifier in `path`, in eval mode: our segment-cosine head by class (no remote
    code runs), any other HF cross-encoder through AutoModelForSequenceClassification."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .crossencoder_modeling import HEAD_NAME, BertSegmentCosineForSequenceClassification

    conf = AutoConfig.from_pretrained(str(path))
    if getattr(conf, "ltr_head", None) == HEAD_NAME:
        model, info = BertSegmentCosineForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
    else:
        model, info = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1,
                                                                         output_loading_info=True)
    if any("classifier" in k or k.startswith(("score", "cos_")) for k in info.get("missing_keys", [])):
        raise ValueError(f"{path} holds an encoder without a trained classification head. Fix: "
                         "fine-tune it first with fine_tune_cross_encoder(), or pass a cross-encoder dir.")
    if model.config.num_labels != 1:
        raise ValueError(f"{path} has num_labels={model.config.num_labels}; a relevance "
                         "cross-encoder needs exactly 1 output. Fix: pass a 1-label cross-encoder.")
    return model.eval()


def _atomic_save(model, tokenizer, meta: dict[str, Any], out_dir: Path) -> None:
    """Write to a sibling temp dir, then swap it in: a crash never leaves a half-written model."""
    with atomic_dir(out_dir) as tmp:
        if _is_segment(model):  # copies crossencoder_modeling.py + auto_map: loadable with trust_remote_code
            model.register_for_auto_class("AutoModelForSequenceClassification")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


__all__ = ["FORMAT_VERSION", "META_FILE"]
