"""The two-tower fine-tuning settings: one validated section (`two_tower:`), read by the trainer and
written into every saved model's metadata.

Why the defaults: the five difficulty levels are the names `ltr.retrieval.mine` writes (this floor may not
import it; `tests/test_twotower.py` checks they agree), grouped into Walmart's three stages: first the
pairs every retriever agrees on, then partial agreement, then the pairs one retriever alone gets right or
wrong. Positives are Exact (grade 3) and mined hard negatives Irrelevant or Complement (grade <= 1):
ESCI's gains make E ten times an S, so the loss separates what the metric separates most. Short texts
(64 tokens), a frozen bottom and 1 epoch a stage keep a fold within minutes on a shared CPU.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ltr.data.config import StrictConfig

from ..text import DEFAULT_FIELDS

#: curriculum order of `ltr.retrieval.LEVELS`, three stages (easy -> hard)
DEFAULT_STAGES: tuple[tuple[str, ...], ...] = (("easy_positive", "easy_negative"), ("medium",),
                                               ("hard_positive", "hard_negative"))


class TwoTowerConfig(StrictConfig):
    """Fine-tuning settings of the bi-encoder (validated; unknown keys are rejected so typos fail loudly)."""

    base_model: str | None = Field(None, description="local HF bi-encoder dir to start from; None = "
                                   "all-MiniLM-L6-v2 (ltr.data.encoder.default_encoder_path)")
    max_length: int = Field(64, ge=8, le=512, description="tokens per query and per product text")
    stages: list[list[str | int]] = Field(
        default_factory=lambda: [list(s) for s in DEFAULT_STAGES],
        description="curriculum: the pairs' `level` values of each stage, easiest stage first")
    curriculum: bool = Field(True, description="False: the same triplets in one shuffled stage (the control)")
    epochs_per_stage: int = Field(1, ge=1, le=20)
    batch_size: int = Field(32, ge=2, description="anchors per step; the in-batch negatives come with them")
    hard_negatives: bool = Field(True, description="add each anchor's mined hard negative to the batch")
    positive_min_grade: int = Field(3, ge=1, le=3, description="a pair with grade >= this is a positive")
    negative_max_grade: int = Field(1, ge=0, le=2, description="a pair with grade <= this is a hard negative")
    scale: float = Field(20.0, gt=0, description="logit scale of the cosine (1 / temperature)")
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    freeze_layers: int = Field(4, ge=0, description="embeddings + this many bottom layers stay frozen")
    cache_frozen: bool = Field(True, description="run the frozen bottom once per text and train the top "
                               "from the cached states")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of queries held out for early "
                                "stopping when no validation pairs are given")
    evals_per_epoch: int = Field(1, ge=1)
    patience: int = Field(2, ge=1, description="evaluations without improvement before a stage ends")
    early_stopping: bool = Field(True, description="False: every stage runs to its end and the last weights are "
                                 "saved (validation is still measured and recorded); a diagnostic")
    eval_k: int = Field(10, ge=1)
    eval_gains: Literal["esci", "exp"] = Field("esci", description="gains of the validation NDCG")
    batch_size_eval: int = Field(64, ge=1)
    text_fields: tuple[str, ...] = DEFAULT_FIELDS
    max_bullet_chars: int = Field(300, ge=0)
    max_description_chars: int = Field(200, ge=0)
    num_threads: int | None = Field(None, ge=1, description="torch threads; None keeps the current setting")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[list[str | int]]) -> list[list[str | int]]:
        if not v or any(not s for s in v):
            raise ValueError("stages must be a non-empty list of non-empty level lists, e.g. "
                             "[[easy_positive, easy_negative], [medium], [hard_positive, hard_negative]]")
        flat = [lvl for s in v for lvl in s]
        dup = sorted({str(lvl) for lvl in flat if flat.count(lvl) > 1})
        if dup:
            raise ValueError(f"stages lists level(s) {dup} more than once; each level belongs to one stage")
        return v

    @field_validator("text_fields")
    @classmethod
    def _fields_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in v if f not in DEFAULT_FIELDS]
        if bad or not v:
            raise ValueError(f"text_fields {list(v)} invalid; use a non-empty subset of {list(DEFAULT_FIELDS)}")
        return tuple(v)

    @model_validator(mode="after")
    def _grades_apart(self) -> TwoTowerConfig:
        if self.negative_max_grade >= self.positive_min_grade:
            raise ValueError(f"negative_max_grade ({self.negative_max_grade}) must be below positive_min_grade "
                             f"({self.positive_min_grade}): a pair cannot be both. Fix: e.g. 1 and 3")
        return self

    def text_kwargs(self) -> dict[str, Any]:
        return {"fields": self.text_fields, "max_bullet_chars": self.max_bullet_chars,
                "max_description_chars": self.max_description_chars}

    def stage_of(self) -> dict[str | int, int]:
        """level -> the index of its stage. With or without a curriculum: the triplets are built from it
        either way, so the unordered control trains on exactly the curriculum's triplets."""
        return {lvl: k for k, s in enumerate(self.stages) for lvl in s}


__all__ = ["DEFAULT_STAGES", "TwoTowerConfig"]
