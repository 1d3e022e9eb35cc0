"""Cascade: cheap tier first, escalate only uncertain pairs (low margin or high entropy) to the next.

As in Walmart's sponsored-search labelling (cross-encoder -> small LLM -> large LLM): most pairs are
easy and the expensive tier only sees the hard ones. Each tier's grades are cached under that tier's
own key; a dollar budget shared by all tiers caps spending (a pair the budget stops from escalating
keeps the grade of the last tier that graded it). `stats` says how many pairs each tier graded.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .backends.base import Backend, LabelResult, OnResult, Pair
from .cache import LabelCache, grade_with_cache


@dataclass
class Tier:
    backend: Backend
    escalate_if_margin_below: float | None = None
    escalate_if_entropy_above: float | None = None

    def uncertain(self, r: LabelResult) -> bool:
        return bool((self.escalate_if_margin_below is not None and r.margin < self.escalate_if_margin_below) or
                    (self.escalate_if_entropy_above is not None and r.entropy > self.escalate_if_entropy_above))


class CascadeBackend(Backend):
    name = "cascade"
    prompt_version = "cascade"

    def __init__(self, tiers: Sequence[Tier], cache: LabelCache | None = None):
        if not tiers:
            raise ValueError("cascade needs at least one tier")
        for t in tiers[:-1]:
            if t.escalate_if_margin_below is None and t.escalate_if_entropy_above is None:
                raise ValueError(f"cascade tier {t.backend.name} needs escalate_if_margin_below or "
                                 "escalate_if_entropy_above (else no pair ever reaches the next tier)")
        self.tiers = list(tiers)
        self.cache = cache
        self.model = "+".join(f"{t.backend.name}:{t.backend.model}" for t in tiers)
        self.stats: list[dict] = []

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        """Cached per tier by the tiers themselves; `on_result` fires with each pair's final result."""
        pending = list(range(len(pairs)))
        final: dict[int, LabelResult] = {}
        spent: dict[int, float] = {}
        self.stats, self.stopped_reason = [], None
        for ti, tier in enumerate(self.tiers):
            if not pending:
                self.stats.append({"tier": ti, "backend": tier.backend.name, "model": tier.backend.model,
                                   "graded": 0, "from_cache": 0, "new": 0, "escalated": 0})
                continue
            sub = [pairs[i] for i in pending]
            res, n_cached, n_new = grade_with_cache(tier.backend, sub, self.cache)
            nxt = []
            graded = 0
            for i, r in zip(pending, res):
                if r is None:  # budget stopped this tier: keep the previous tier's grade, if any
                    continue
                graded += 1
                spent[i] = spent.get(i, 0.0) + r.cost
                final[i] = r
                if ti < len(self.tiers) - 1 and tier.uncertain(r):
                    nxt.append(i)
            if getattr(tier.backend, "stopped_reason", None):
                self.stopped_reason = tier.backend.stopped_reason
            self.stats.append({"tier": ti, "backend": tier.backend.name, "model": tier.backend.model,
                               "graded": graded, "from_cache": n_cached, "new": n_new, "escalated": len(nxt)})
            pending = nxt
        out = []
        for i in sorted(final):
            r = final[i]
            fr = replace(r, backend=f"cascade/{r.backend}", cost=spent[i])  # keeps its tier's output_mode
            out.append(fr)
            if on_result:
                on_result(pairs[i], fr)
        return out
