"""Cross-encoder relevance feature: all-MiniLM-L6-v2 + a 1-logit head, fine-tuned on (LLM) labels.

Why it looks like this:
- Two heads (`CrossEncoderConfig.head`). Default "segment_cosine": one joint pass over
  "[CLS] query [SEP] product [SEP]", score = scale * cos(mean query-segment states, mean product-segment
  states) + bias (`crossencoder_modeling.py`). all-MiniLM-L6-v2 is a bi-encoder checkpoint, so this head
  starts close to its cosine ranking, while a fresh [CLS] head ("cls") starts at random and measured
  random-level held-out NDCG after CPU-budget fine-tuning.
- Saved as a Hugging Face sequence classifier (num_labels=1) + tokenizer + `ltr_cross_encoder.json`
  (version, training config, metrics). "cls" is a plain `BertForSequenceClassification` that
  sentence-transformers' `CrossEncoder(path)` loads as is; "segment_cosine" ships its modeling file with
  an `auto_map`, so `CrossEncoder(path, trust_remote_code=True)` loads the very same weights. Any other
  local cross-encoder dir can be scored by `CrossEncoderScorer(path)`.

One job per module:
- `config.py`: `CrossEncoderConfig`, the validated fine-tuning settings.
- `crossencoder_modeling.py`: the segment-cosine model (torch + transformers only: it ships with the weights).
- `base_model.py`: `load_base_cross_encoder`, the encoder with a fresh head to start from.
- `batching.py`: tokenise once, length-bucketed batches padded to their own width.
- `frozen.py`: freeze the bottom layers, run them once, train only the top from the cache.
- `trainer.py`: `fine_tune_cross_encoder` (losses, linear probe, calibration, early stopping, MLflow).
- `artifact.py`: the saved dir's format (`META_FILE`) and its crash-safe write.
- `scorer.py`: `CrossEncoderScorer` and `score_pairs`, the `ce_score` feature.
- `onnx_export.py`: the optional ONNX Runtime backend (export, int8 quantisation, cache).
"""
from __future__ import annotations

from .artifact import FORMAT_VERSION, META_FILE
from .base_model import load_base_cross_encoder
from .config import CrossEncoderConfig
from .scorer import Backend, CrossEncoderScorer, score_pairs
from .trainer import fine_tune_cross_encoder

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "Backend",
    "CrossEncoderConfig",
    "CrossEncoderScorer",
    "fine_tune_cross_encoder",
    "load_base_cross_encoder",
    "score_pairs",
]
