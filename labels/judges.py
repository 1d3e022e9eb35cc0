"""Several judges: every pair graded by more than one model or prompt, combined into one label.

One LLM's grade carries that model's and that prompt's bias; a panel averages some of it out, and how
much the judges agree with each other (quadratic kappa) says how far any single one can be trusted,
beside how far each agrees with the human judgments. Each judge caches under its own key (its backend
name, model and prompt version), so adding a judge to a panel pays only for the new judge.

`mean`: the mean of the judges' grade distributions. `majority`: the vote shares of the judges' hard
grades as the distribution, the most voted grade as the grade (a tie goes to the tied grade with the
highest mean probability): the rule Feast's `LabelView` calls MAJORITY_VOTE, applied here per pair.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd

from .backends.base import Backend, LabelResult, OnResult, Pair
from .cache import LabelCache, grade_with_cache
from .metrics import quadratic_kappa

COMBINE = ("mean", "majority")


def combine(results: Sequence[LabelResult], how: str) -> tuple[tuple[float, ...], int]:
    """(distribution, hard grade) of one pair from its judges' results."""
    mean = np.mean([r.probs for r in results], axis=0)
    if how == "mean":
        return tuple(float(x) for x in mean), int(np.argmax(mean))
    if how != "majority":
        raise ValueError(f"unknown combine {how!r}. Fix: use one of {COMBINE}.")
    votes = np.bincount([r.grade for r in results], minlength=4).astype(float)
    tied = np.flatnonzero(votes == votes.max())
    winner = int(tied[np.argmax(mean[tied])])
    return tuple(float(v) for v in votes / votes.sum()), winner


class JudgesBackend(Backend):
    """Grades with every judge (each through the cache), then combines; `report` holds the agreement."""

    def __init__(self, judges: Sequence[tuple[str, Backend]], how: str = "mean", cache: LabelCache | None = None):
        if len(judges) < 2:
            raise ValueError("several judges need at least two. Fix: add labels.judges entries.")
        names = [n for n, _ in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must differ, got {names}. Fix: give each judge a distinct `name`.")
        if how not in COMBINE:
            raise ValueError(f"unknown combine {how!r}. Fix: use one of {COMBINE}.")
        self.judges, self.how, self.cache = list(judges), how, cache
        self.name = f"judges:{how}"
        self.model = "+".join(f"{b.name}:{b.model}" for _, b in judges)
        self.prompt_version = "+".join(dict.fromkeys(b.prompt_version for _, b in judges))
        self.per_judge: dict[str, list[LabelResult | None]] = {}
        self.stats: list[dict] = []

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        """A pair gets a label only when every judge graded it (a budget stop leaves it ungraded)."""
        self.per_judge, self.stats, self.stopped_reason = {}, [], None
        for name, be in self.judges:
            res, n_cached, n_new = grade_with_cache(be, list(pairs), self.cache)
            self.per_judge[name] = res
            self.stats.append({"judge": name, "backend": be.name, "model": be.model, "prompt_version":
                               be.prompt_version, "from_cache": n_cached, "new": n_new,
                               "graded": sum(r is not None for r in res)})
            self.stopped_reason = self.stopped_reason or getattr(be, "stopped_reason", None)
        out = []
        for i, pair in enumerate(pairs):
            rs = [r for r in (self.per_judge[n][i] for n, _ in self.judges) if r is not None]
            if len(rs) < len(self.judges):
                continue
            probs, hard = combine(rs, self.how)
            modes = ", ".join(x.output_mode or x.backend for x in rs)
            r = LabelResult(pair.query_id, pair.product_id, probs, self.name, self.model,  # type: ignore[arg-type]
                               self.prompt_version, sum(x.tokens_in for x in rs), sum(x.tokens_out for x in rs),
                               sum(x.cost for x in rs), hard, output_mode=f"{self.how}[{modes}]")
            out.append(r)
            if on_result:
                on_result(pair, r)
        return out


def _grades(results: Sequence[LabelResult | None]) -> pd.DataFrame:
    return pd.DataFrame([(r.query_id, r.product_id, r.grade) for r in results if r is not None],
                        columns=["query_id", "product_id", "grade"])


def agreement(per_judge: dict[str, list[LabelResult | None]], combined: Sequence[LabelResult | None] = (),
              judgments: pd.DataFrame | None = None) -> dict:
    """Quadratic kappa between every two judges on the pairs both graded, and of each judge (and the
    combined label) with the human judgments where there are some."""
    between = {}
    for a, b in itertools.combinations(per_judge, 2):
        m = _grades(per_judge[a]).merge(_grades(per_judge[b]), on=["query_id", "product_id"])
        between[f"{a} ~ {b}"] = {"n_pairs": len(m), "kappa_quadratic":
                                 quadratic_kappa(m["grade_x"], m["grade_y"]) if len(m) else None}
    kappas = [v["kappa_quadratic"] for v in between.values() if v["kappa_quadratic"] is not None]
    rep: dict = {"between_judges": between, "mean_pairwise_kappa": float(np.mean(kappas)) if kappas else None}
    if judgments is not None and len(judgments):
        from ltr.data.dataset import with_query_ids
        human = with_query_ids(judgments)[["query_id", "product_id", "grade"]].rename(columns={"grade": "human"})
        rep["with_humans"] = {}
        for name, res in [*per_judge.items(), ("combined", list(combined))]:
            m = _grades(res).merge(human, on=["query_id", "product_id"])
            rep["with_humans"][name] = {"n_pairs": len(m), "kappa_quadratic":
                                        quadratic_kappa(m["human"], m["grade"]) if len(m) else None}
    return rep
