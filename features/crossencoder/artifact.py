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


def _atomic_save(model, tokenizer, meta: dict[str, Any], out_dir: Path) -> None:
    """Write to a sibling temp dir, then swap it in: a crash never leaves a half-written model."""
    with atomic_dir(out_dir) as tmp:
        if _is_segment(model):  # copies crossencoder_modeling.py + auto_map: loadable with trust_remote_code
            model.register_for_auto_class("AutoModelForSequenceClassification")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


__all__ = ["FORMAT_VERSION", "META_FILE"]
