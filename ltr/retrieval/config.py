"""The `retrieval` and `mining` sections of the run config (also what `ltr retrieve` / `ltr mine` read).

Why the defaults: k = 50 per retriever is the depth a re-ranker usually sees and keeps the union of two
retrievers near 100 pairs per query; top = 10 is the first page a shopper sees, so "ranks it at the top"
means "would show it"; the weights favour hard positives and hard negatives, the pairs the Walmart
sponsored-search work found to teach a ranker most, and keep some easy pairs as anchors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from ltr.data.config import StrictConfig

#: difficulty levels in curriculum order (easiest first); `ltr.retrieval.mining` defines each one
LEVELS: tuple[str, ...] = ("easy_positive", "easy_negative", "medium", "hard_positive", "hard_negative")
DIFFICULTY: dict[str, int] = {lvl: i + 1 for i, lvl in enumerate(LEVELS)}
DEFAULT_WEIGHTS: dict[str, float] = {"easy_positive": 0.1, "easy_negative": 0.1, "medium": 0.2,
                                     "hard_positive": 0.3, "hard_negative": 0.3}


class RetrievalError(ValueError):
    """Bad input to retrieval or mining; the message names the field and the fix."""


def weights_problem(weights: dict[str, float]) -> str | None:
    """What is wrong with level weights (None: nothing): known levels, finite, >= 0, at least one > 0."""
    unknown = [k for k in weights if k not in LEVELS]
    if unknown:
        return f"unknown level(s) {unknown}; the levels are {list(LEVELS)}"
    bad = {k: v for k, v in weights.items() if not (float(v) >= 0 and float(v) != float("inf"))}
    if bad:
        return f"weight(s) {bad} must be finite and >= 0"
    if not any(float(v) > 0 for v in weights.values()):
        return "every weight is 0, so no pair can be chosen"
    return None


def check_weights(weights: dict[str, float], key: str = "weights") -> dict[str, float]:
    """The weights as floats, or a RetrievalError naming the problem and the fix."""
    problem = weights_problem(weights)
    if problem:
        raise RetrievalError(f"{key}: {problem}. Fix: e.g. {{hard_positive: 0.3, hard_negative: 0.3, medium: 0.2}}.")
    return {k: float(v) for k, v in weights.items()}


class RetrievalConfig(StrictConfig):
    enabled: Union[bool, Literal["auto"]] = Field(
        "auto", description="main job: retrieve + mine candidates; auto = when the dataset brings no candidate "
        "lists (no candidates.parquet and no judgments to derive them from)")
    k: int = Field(50, ge=1, description="top-k of each first-stage retriever (BM25, bi-encoder)")
    bienc_path: Optional[Path] = Field(None, description="bi-encoder model dir for retrieval (e.g. a fine-tuned "
                                       "two-tower); default: the zero-shot all-MiniLM-L6-v2")
    bienc_max_length: int = Field(128, ge=8, description="token budget of product and query texts")
    batch_size: int = Field(64, ge=1)
    champion: Optional[str] = Field(None, description="registered model that re-ranks the union, e.g. "
                                    "models:/ltr-ranker@champion; none: two retrievers vote")


class MiningConfig(StrictConfig):
    top: int = Field(10, ge=1, description="a retriever 'ranks a pair at the top' when its rank <= top")
    budget: Optional[int] = Field(None, ge=1, description="pairs to label; default budget_per_query x queries")
    budget_per_query: int = Field(30, ge=1)
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS),
                                      description=f"share of the budget per level, of {list(LEVELS)}")

    @field_validator("weights")
    @classmethod
    def _known_levels(cls, v: dict[str, float]) -> dict[str, float]:
        problem = weights_problem(v)
        if problem:
            raise ValueError(problem)
        return {k: float(x) for k, x in v.items()}

    def budget_for(self, n_queries: int) -> int:
        return int(self.budget if self.budget is not None else self.budget_per_query * max(1, n_queries))
