"""Query-grouped splits: the one rule that decides which queries a run holds out.

Why on the floor: the labeler must know the run's test queries before the training frame exists (a grader
learning from human grades may only see training queries), and the rankers split the frame later; both
call the same function, so the two can never disagree about which queries are held out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


class SplitError(ValueError):
    """A split that cannot be made; the message names the field and the fix."""


def grouped_split(qid, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split rows into len(fractions) boolean masks by whole query groups (deterministic for a seed).

    fractions are shares of *queries*; they must sum to 1 (the last part takes the rounding remainder).
    The parts depend only on the set of query ids and the seed, never on row order.
    """
    fr = np.asarray(fractions, dtype=float)
    if (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise SplitError(f"fractions {list(fractions)} must be >= 0 and sum to 1.")
    q = np.asarray(qid)
    uniq = np.array(sorted(pd.unique(pd.Series(q)).tolist()), dtype=object)
    if len(uniq) < len(fr):
        raise SplitError(f"{len(uniq)} queries cannot be split into {len(fr)} parts. Fix: use more queries.")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    cuts = np.floor(np.cumsum(fr)[:-1] * len(uniq) + 1e-9).astype(int)
    parts = np.split(uniq[perm], cuts)
    return [pd.Series(q).isin(set(p.tolist())).to_numpy() for p in parts]


def held_out_queries(qid, test_fraction: float, seed: int) -> set[str]:
    """The query ids a run holds out for testing: the second part of `grouped_split(qid, [1 - f, f], seed)`,
    exactly what the training stage's split of the frame holds out."""
    q = pd.unique(pd.Series(np.asarray(qid)).astype(str))
    held = grouped_split(q, [1 - test_fraction, test_fraction], seed)[1]
    return set(q[held].tolist())


__all__ = ["SplitError", "grouped_split", "held_out_queries"]
