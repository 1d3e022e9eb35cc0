"""The one interface every labeler backend speaks: `grade(pairs) -> list[LabelResult]`.

A backend turns (query, product) pairs into grade distributions p0..p3 over the 0-3 scale;
score = expected grade / 3. Results are handed to `on_result` the moment each one is ready, so the
caller can commit it to the cache before the next one arrives (a killed run loses nothing stored).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ltr.data.schemas import product_text_hash


class LabelerError(RuntimeError):
    """A pair could not be graded; the message says which pair, why, and the fix."""


@dataclass(frozen=True)
class Pair:
    query_id: str
    query: str
    product_id: str
    product: Mapping[str, Any] = field(hash=False, compare=False)

    @property
    def text_hash(self) -> str:
        return product_text_hash(dict(self.product))


@dataclass
class LabelResult:
    query_id: str
    product_id: str
    probs: tuple[float, float, float, float]
    backend: str
    model: str
    prompt_version: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    hard_grade: int | None = None  # a backend's own decision rule (e.g. kappa-tuned cut points)
    #: how an LLM's distribution was obtained, `<request mode>/<source>` (e.g. `json_schema/one-hot`):
    #: the LABELS column `output_mode`; None for backends that are not LLM calls
    output_mode: str | None = None

    @property
    def score(self) -> float:
        return float(np.dot(self.probs, [0, 1, 2, 3]) / 3.0)

    @property
    def grade(self) -> int:
        return int(self.hard_grade) if self.hard_grade is not None else int(np.argmax(self.probs))

    @property
    def margin(self) -> float:
        s = sorted(self.probs, reverse=True)
        return float(s[0] - s[1])

    @property
    def entropy(self) -> float:
        p = np.clip(np.asarray(self.probs, dtype=float), 1e-12, 1.0)
        return float(-(p * np.log(p)).sum())


OnResult = Callable[[Pair, LabelResult], None]


class Backend(ABC):
    """Grades pairs. `name`, `model` and `prompt_version` are provenance and part of the cache key."""

    name: str = "base"
    model: str = ""
    prompt_version: str = ""

    @abstractmethod
    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        """Grade `pairs`; call `on_result(pair, result)` as each is ready. May return fewer results than
        pairs only when a budget stopped it (see `stopped_reason`)."""

    stopped_reason: str | None = None

    def close(self) -> None:  # noqa: B027  (concrete no-op on purpose; pragma: no cover)
        """Release held resources. Deliberately a concrete no-op, not abstract: most backends hold none,
        so subclasses override it only when they do."""
