"""Agreement metrics between predicted and human 0-3 grades (no I/O; used by calibration and the grader)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

N_GRADES = 4


def confusion(y_true: Sequence[int], y_pred: Sequence[int], k: int = N_GRADES) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return m


def quadratic_kappa(y_true: Sequence[int], y_pred: Sequence[int], k: int = N_GRADES) -> float:
    """Cohen's kappa with quadratic weights: disagreeing by 2 grades costs 4x disagreeing by 1."""
    o = confusion(y_true, y_pred, k).astype(float)
    n = o.sum()
    if n == 0:
        return float("nan")
    w = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / n
    den = (w * e).sum()
    return float(1.0 - (w * o).sum() / den) if den > 0 else 0.0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(spearmanr(a, b).statistic)


def apply_thresholds(values: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Grade = number of thresholds the value reaches (thresholds ascending, len 3)."""
    return np.searchsorted(np.asarray(thresholds, dtype=float), np.asarray(values, dtype=float),
                           side="right").astype(int)


def quantile_thresholds(values: Sequence[float], grades: Sequence[int], k: int = N_GRADES) -> np.ndarray:
    """Cut points that reproduce the grade distribution of `grades` on `values` (zero-shot mapping)."""
    g = np.asarray(grades, dtype=int)
    cum = np.cumsum(np.bincount(g, minlength=k))[:-1] / len(g)
    return np.quantile(np.asarray(values, dtype=float), cum)


def tune_thresholds(values: Sequence[float], grades: Sequence[int], k: int = N_GRADES,
                    n_grid: int = 99, rounds: int = 3) -> np.ndarray:
    """Cut points maximising quadratic kappa on (values, grades): coordinate ascent over a quantile grid,
    started from the distribution-matching cuts."""
    v = np.asarray(values, dtype=float)
    g = np.asarray(grades, dtype=int)
    t = quantile_thresholds(v, g, k)
    grid = np.unique(np.quantile(v, np.linspace(0.005, 0.995, n_grid)))
    best = quadratic_kappa(g, apply_thresholds(v, t), k)
    for _ in range(rounds):
        improved = False
        for i in range(k - 1):
            lo = t[i - 1] if i > 0 else -np.inf
            hi = t[i + 1] if i < k - 2 else np.inf
            for c in grid[(grid >= lo) & (grid <= hi)]:
                cand = t.copy()
                cand[i] = c
                s = quadratic_kappa(g, apply_thresholds(v, cand), k)
                if s > best + 1e-9:
                    best, t, improved = s, cand, True
        if not improved:
            break
    return t
