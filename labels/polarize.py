"""Sigmoid polarization of LLM scores: σ(α·(s−β)), optionally min-max rescaled so 0->0 and 1->1.

Pushes scores away from the middle (α large = closer to a hard relevant/irrelevant split at β) while
keeping their order; α and β are tuned downstream against ranking metrics.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _check(alpha: float, beta: float) -> None:
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"polarize: alpha must be a positive finite number, got {alpha}. Fix: use e.g. 10.")
    if not np.isfinite(beta) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"polarize: beta must be within [0, 1], got {beta}. Fix: use e.g. 0.5.")


def polarize(scores, alpha: float, beta: float, rescale: bool = True) -> np.ndarray:
    """Vectorised σ(α·(s−β)); with `rescale` the result is min-max mapped so σ(0)->0 and σ(1)->1."""
    _check(alpha, beta)
    s = np.asarray(scores, dtype=float)
    if s.size and (np.isnan(s).any() or s.min() < 0 or s.max() > 1):
        raise ValueError("polarize: scores must be finite and within [0, 1]. Fix: pass labels.score.")
    def f(x):  # numerically stable sigmoid
        return 0.5 * (1.0 + np.tanh(0.5 * alpha * (x - beta)))
    y = f(s)
    if rescale:
        lo, hi = f(0.0), f(1.0)
        y = (y - lo) / (hi - lo)
    return np.clip(y, 0.0, 1.0)


def plot_polarization(alpha: float, beta: float, path: str | Path, rescale: bool = True) -> Path:
    """PNG of the transform (and the identity) for given α, β."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _check(alpha, beta)
    x = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    ax.plot(x, x, "--", color="grey", lw=1, label="identity")
    ax.plot(x, polarize(x, alpha, beta, rescale), lw=2,
            label=f"α={alpha:g}, β={beta:g}" + (", rescaled" if rescale else ""))
    ax.set_xlabel("LLM score s")
    ax.set_ylabel("polarized label")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("σ(α·(s−β))")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
