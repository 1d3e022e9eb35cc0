"""The saved two-tower's on-disk format: a sentence-transformers bi-encoder dir plus `META_FILE`.

Why this layout: the model must be usable wherever the zero-shot bi-encoder is (`bienc_cos`, the
retriever, serving), so it is exactly what `features.biencoder.BiEncoder` reads (HF weights, tokenizer,
`sentence_bert_config.json` with the trained token budget) and what sentence-transformers loads (modules,
mean pooling, normalize). The version (a hash of config, seed and data) is also written into config.json,
so the bi-encoder identity a registered ranker records (`ltr.tracking.encoder_identity` hashes config.json)
tells a fine-tuned tower from its base. Writes are crash-safe: a temp dir swapped in at the end.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ltr.data.atomic import atomic_dir

META_FILE = "ltr_two_tower.json"
FORMAT_VERSION = 1
_ST_FILES = ("modules.json", "config_sentence_transformers.json")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved two-tower; a clear error for anything else."""
    p = Path(path)
    meta = p / META_FILE
    if not meta.exists():
        raise FileNotFoundError(f"{p} is not a saved two-tower (no {META_FILE}). Fix: pass the directory "
                                "fit_two_tower() wrote.")
    m = json.loads(meta.read_text())
    if m.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{p}: two-tower format {m.get('format_version')} is not {FORMAT_VERSION}. Fix: "
                         "re-train it with this version of the code.")
    return m


def _sentence_transformers_files(base: Path, tmp: Path, max_length: int) -> None:
    """Module list and pooling of the base model (mean pooling + normalize), the trained token budget."""
    for name in _ST_FILES:
        if (base / name).exists():
            shutil.copy2(base / name, tmp / name)
    if (base / "1_Pooling").is_dir():
        shutil.copytree(base / "1_Pooling", tmp / "1_Pooling")
    (tmp / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(max_length), "do_lower_case": False}, indent=2) + "\n")


def save_two_tower(model, tokenizer, meta: dict[str, Any], base: Path, out_dir: Path) -> None:
    """Write the tower to a sibling temp dir, then swap it in: a crash never leaves a half-written model."""
    with atomic_dir(out_dir) as tmp:
        model.config.ltr_two_tower_version = meta["version"]
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _sentence_transformers_files(Path(base), tmp, meta["config"]["max_length"])
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def load_two_tower(path: str | Path, max_length: int | None = None, num_threads: int | None = None):
    """The saved tower as a `features.biencoder.BiEncoder` (at its trained token budget unless given)."""
    from ..biencoder import BiEncoder

    meta = read_meta(path)
    return BiEncoder(path, max_length=max_length or meta["config"]["max_length"], num_threads=num_threads)


_FEATURE_ENCODERS: dict[str, Any] = {}


def feature_bi_encoder(path: str | Path | None = None):
    """The process-wide encoder behind `bienc_cos` for `FeaturesConfig.bienc_path`: the zero-shot default
    for None, a saved two-tower at its trained token budget, any other local bi-encoder dir at the feature
    length. One instance per path, so offline features and request-time features share its memo."""
    from ..biencoder import FEATURE_MAX_LENGTH, BiEncoder, default_biencoder

    if path is None or str(path) == "default":
        return default_biencoder()
    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"features.bienc_path={p} is not a model directory (no config.json). Fix: "
                                "point it at a directory fit_two_tower() wrote, or leave it empty for zero-shot.")
    key = str(p.resolve())
    if key not in _FEATURE_ENCODERS:
        _FEATURE_ENCODERS[key] = (load_two_tower(p) if (p / META_FILE).exists()
                                  else BiEncoder(p, max_length=FEATURE_MAX_LENGTH))
    return _FEATURE_ENCODERS[key]


__all__ = ["FORMAT_VERSION", "META_FILE", "feature_bi_encoder", "load_two_tower", "read_meta", "save_two_tower"]
