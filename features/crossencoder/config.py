"""The cross-encoder's fine-tuning settings: one validated section of the run config (`cross_encoder:`).

Why here and on `StrictConfig`: the trainer, the scorer's metadata and `ltr.run_config` all read the same
fields, and an experiment is a config diff, so a misspelt key must fail loudly instead of training the
default model.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ltr.data.config import StrictConfig

from ..text import DEFAULT_FIELDS


class CrossEncoderConfig(StrictConfig):
    """Fine-tuning settings (validated; unknown keys are rejected so typos fail loudly)."""

    base_model: str | None = Field(None, description="local HF model dir; None = all-MiniLM-L6-v2")
    max_length: int = Field(64, ge=8, le=512, description="tokens per (query, product) pair")
    head: Literal["segment_cosine", "cls"] = Field(
        "segment_cosine", description="segment_cosine: scale * cos(mean query-segment, mean product-segment "
        "states) + bias from the joint pass (starts at the bi-encoder's ranking); cls: a 1-logit head on "
        "the [CLS] pooler (plain BertForSequenceClassification)")
    segment_local_layers: int = Field(0, ge=0, description="segment_cosine: bottom layers with "
                                      "within-segment attention only (the rest attend across segments)")
    segment_token_types: bool = Field(False, description="segment_cosine: feed token_type_ids to the "
                                      "embeddings (False feeds zeros, as the bi-encoder was trained)")
    segment_own_cls: bool = Field(False, description="segment_cosine: give the product segment its own [CLS] "
                                  "and positions from 0, as the bi-encoder saw it alone")
    cross_gate_init: float | None = Field(None, description="segment_cosine: a learnt per-head bias on "
                                          "query<->product attention in the cross-attending layers, starting "
                                          "here (e.g. -4: nearly the bi-encoder); None = no gate")
    cls_residual: bool = Field(False, description="segment_cosine: add a [CLS] linear head initialised at 0")
    cos_scale_init: float = Field(20.0, gt=0, description="segment_cosine: initial logit scale of the cosine")
    epochs: int = Field(2, ge=1, le=100)
    max_train_queries: int | None = Field(None, ge=2, description="fine-tune on at most this many labelled "
                                          "queries (a seeded sample, validation queries included): the CPU "
                                          "budget of a catalog with thousands of labelled queries; None = all")
    loss: Literal["listwise", "pairwise", "mse"] = "listwise"
    temperature: float = Field(5.0, gt=0, description="listwise target = softmax(temperature * score)")
    queries_per_batch: int = Field(4, ge=1)
    max_docs_per_query: int = Field(32, ge=2, description="docs sampled per query per step")
    lr: float = Field(5e-5, gt=0, description="encoder learning rate")
    head_lr: float = Field(1e-3, gt=0, description="pooler + classifier learning rate")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    freeze_layers: int = Field(2, ge=0, description="embeddings + this many bottom layers stay frozen")
    cache_frozen: bool = Field(True, description="run the frozen bottom once and cache its output: later "
                               "epochs only pay for the trainable top layers")
    init_head: Literal["linear_probe", "random"] = Field(
        "linear_probe", description="fit the fresh head on frozen features first (LP-FT), or start random")
    probe_l2: float = Field(1e-3, ge=0, description="L2 penalty of the linear-probe head fit")
    distill_weight: float = Field(0.0, ge=0, description="weight of a listwise KL to bi-encoder cosine")
    distill_temperature: float = Field(20.0, gt=0)
    distill_teacher: str | None = Field(None, description="bi-encoder dir for the distillation target; None = "
                                        "base_model (set it when base_model is itself a fine-tuned cross-encoder)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of queries held out for early stopping")
    evals_per_epoch: int = Field(1, ge=1)
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    eval_k: int = Field(10, ge=1)
    batch_size_eval: int = Field(64, ge=1)
    text_fields: tuple[str, ...] = DEFAULT_FIELDS
    max_bullet_chars: int = Field(300, ge=0)
    max_description_chars: int = Field(200, ge=0)
    num_threads: int | None = Field(None, ge=1, description="torch threads; None keeps the current setting")

    @field_validator("text_fields")
    @classmethod
    def _fields_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in v if f not in DEFAULT_FIELDS]
        if bad or not v:
            raise ValueError(f"text_fields {list(v)} invalid; use a non-empty subset of {list(DEFAULT_FIELDS)}")
        return tuple(v)

    def text_kwargs(self) -> dict[str, Any]:
        return {"fields": self.text_fields, "max_bullet_chars": self.max_bullet_chars,
                "max_description_chars": self.max_description_chars}


__all__ = ["CrossEncoderConfig"]
