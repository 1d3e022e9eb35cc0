"""Graded, levelled pairs -> training triplets (query, positive, hard negative) -> stages, easy to hard.

Why triplets are built once and only then staged: the curriculum and its control ("the same data,
unordered") must differ in order alone. Every positive gets a hard negative of its query and every
negative left over gets a positive of its query, each partner drawn from the same stage where one exists,
else the nearest easier stage, else the nearest harder one; a triplet then belongs to the stage of its
harder member. The curriculum trains stage after stage; the control shuffles all triplets into one stage.
A level is the miner's statement about difficulty (retriever agreement), never a label: the grade alone
decides whether a pair is a positive or a negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import TwoTowerConfig


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: its levels and its triplets (rows: query_id, pos, neg (-1: none), level)."""

    index: int
    levels: tuple[str | int, ...]
    triplets: pd.DataFrame


def pair_roles(pairs: pd.DataFrame, cfg: TwoTowerConfig) -> np.ndarray:
    """'pos' | 'neg' | '' per pair, from its grade alone."""
    g = pairs["grade"].to_numpy()
    return np.where(g >= cfg.positive_min_grade, "pos", np.where(g <= cfg.negative_max_grade, "neg", ""))


def _partner(cands: np.ndarray, cand_stage: np.ndarray, stage: int, rng: np.random.Generator) -> int:
    """A partner from the same stage, else the nearest easier stage, else the nearest harder one; -1: none."""
    if not len(cands):
        return -1
    order = [stage] + list(range(stage - 1, -1, -1)) + list(range(stage + 1, int(cand_stage.max()) + 1))
    for s in order:
        pool = cands[cand_stage == s]
        if len(pool):
            return int(rng.choice(pool))
    return -1


def build_triplets(pairs: pd.DataFrame, cfg: TwoTowerConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Triplets over row positions of `pairs` (columns query_id, grade, level, _stage):
    query_id, pos, neg (-1 when the query has no negative), stage (of the harder member), level (its level).
    Negatives of a query without any positive cannot form a triplet and are left out."""
    roles = pair_roles(pairs, cfg)
    stage = pairs["_stage"].to_numpy()
    level = pairs["level"].to_numpy()
    rows = []
    for q, idx in pairs.groupby("query_id", sort=True).indices.items():
        pos, neg = idx[roles[idx] == "pos"], idx[roles[idx] == "neg"]
        used: set[int] = set()
        for p in pos:
            n = _partner(neg, stage[neg], stage[p], rng)
            used.add(n)
            rows.append((q, int(p), n))
        for n in neg:
            if n not in used and len(pos):
                rows.append((q, _partner(pos, stage[pos], stage[n], rng), int(n)))
    t = pd.DataFrame(rows, columns=["query_id", "pos", "neg"])
    if t.empty:
        return t.assign(stage=pd.Series(dtype=int), level=pd.Series(dtype=object))
    neg_stage = np.where(t["neg"] >= 0, stage[t["neg"].clip(lower=0)], -1)
    pos_stage = stage[t["pos"]]
    harder_is_neg = neg_stage > pos_stage
    t["stage"] = np.maximum(pos_stage, neg_stage)
    t["level"] = np.where(harder_is_neg, level[t["neg"].clip(lower=0)], level[t["pos"]])
    return t


def stages(pairs: pd.DataFrame, cfg: TwoTowerConfig, rng: np.random.Generator) -> list[Stage]:
    """The stages in training order, each with its shuffled triplets (one stage without a curriculum)."""
    trip = build_triplets(pairs, cfg, rng)
    if not cfg.curriculum:
        levels = tuple(lvl for s in cfg.stages for lvl in s)
        return [Stage(0, levels, trip.sample(frac=1.0, random_state=rng.integers(2**31)).reset_index(drop=True))]
    out = []
    for k, lvls in enumerate(cfg.stages):
        part = trip[trip["stage"] == k]
        out.append(Stage(k, tuple(lvls), part.sample(frac=1.0, random_state=rng.integers(2**31))
                         .reset_index(drop=True)))
    return out


__all__ = ["Stage", "build_triplets", "pair_roles", "stages"]
