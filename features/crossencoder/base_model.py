"""The starting point of fine-tuning: a local encoder with a fresh 1-logit head ("cls" or "segment_cosine").

Why apart from `crossencoder_modeling.py`: that file is copied next to the saved weights and must import
only torch and transformers, while building a model from our config needs the project's encoder path
and `CrossEncoderConfig`.
"""
from __future__ import annotations

from pathlib import Path

from ltr.data.encoder import default_encoder_path

from .config import CrossEncoderConfig
from .crossencoder_modeling import HEAD_NAME, BertSegmentCosineForSequenceClassification


def load_base_cross_encoder(base_model: str | Path | None, max_length: int,
                            cfg: CrossEncoderConfig | None = None):
    """(model, tokenizer): the encoder with a fresh 1-logit head, set up the way sentence-transformers
    expects (sigmoid activation, model_max_length = max_length).

    cfg=None (or cfg.head == "cls") gives a plain BertForSequenceClassification; cfg.head ==
    "segment_cosine" gives `BertSegmentCosineForSequenceClassification` on the same encoder weights.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(base_model) if base_model else default_encoder_path()
    if not path.exists():
        raise FileNotFoundError(f"base_model {path} does not exist. Fix: point base_model at a local HF model "
                                "dir or leave it empty for all-MiniLM-L6-v2.")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = max_length
    if cfg is not None and cfg.head == HEAD_NAME:
        conf = AutoConfig.from_pretrained(str(path), num_labels=1)
        if conf.model_type != "bert":
            raise ValueError(f"head='segment_cosine' needs a BERT-type encoder, {path} is "
                             f"{conf.model_type!r}. Fix: use head='cls' for this base model.")
        if cfg.segment_local_layers > conf.num_hidden_layers:
            raise ValueError(f"segment_local_layers={cfg.segment_local_layers} but the model has "
                             f"{conf.num_hidden_layers} layers. Fix: use 0..{conf.num_hidden_layers}.")
        conf.update({"ltr_head": HEAD_NAME, "segment_local_layers": cfg.segment_local_layers,
                     "segment_token_types": cfg.segment_token_types, "cls_residual": cfg.cls_residual,
                     "segment_own_cls": cfg.segment_own_cls, "cross_gate_init": cfg.cross_gate_init,
                     "cls_token_id": int(tok.cls_token_id or 101),
                     "cos_scale_init": cfg.cos_scale_init, "sep_token_id": int(tok.sep_token_id or 102)})
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the expected "cos_* missing, pooler unused" load report is noise
        try:
            model = BertSegmentCosineForSequenceClassification.from_pretrained(str(path), config=conf)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    return model, tok


def _is_segment(model) -> bool:
    return isinstance(model, BertSegmentCosineForSequenceClassification)


__all__ = ["load_base_cross_encoder"]
