"""Training labels: polarized LLM content score, engagement score, and their blends.

content   c = sigma(alpha * (s - beta)), rescaled so c(0)=0 and c(1)=1 (alpha=None: c = s, no sigmoid).
          The sigmoid pushes "somewhat relevant" LLM scores apart: items above beta get pulled toward 1,
          items below toward 0, so the ranker learns a sharp relevant/irrelevant boundary.
engagement e = weighted sum of smoothed click / add-to-cart / purchase rates (Bayesian smoothing toward
          the global rate, so a pair seen twice does not outrank one seen a thousand times), normalized
          to [0,1] (by default per query: only the order within a query matters to a ranker).
blends    weighted: y = w*c + (1-w)*e
          gated:    y = w*c + (1-w)*e*[c >= gate]  (engagement only counts for content-relevant items,
                    so a popular irrelevant item can never climb on clicks alone)

Integer vs continuous labels. XGBoost's `rank:ndcg` uses exponential gain 2^y - 1 by default, which needs
integer labels <= 31. The default here is `label_mode="continuous"` with `ndcg_exp_gain=False` (linear
gain): the blended label is a real number, and bucketing would throw away the fine structure the sigmoid
just created, while exponential gain on top would apply a *second* polarization that entangles with alpha.
`label_mode="bucket"` maps y in [0,1] to integers 0..n_buckets-1 (<= 31) for exponential gain (and for
LightGBM, whose lambdarank only takes integer labels).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from labels.polarize import polarize as _polarize
from ltr.data.engagement import smoothed_rate
from ltr.data.schemas import FrameColumns

from .train_config import EngagementConfig, TargetConfig


class TargetError(ValueError):
    """Bad input for a label; the message names the field and the fix."""


def polarize(scores, alpha: float, beta: float, rescale: bool = True) -> np.ndarray:
    """labels.polarize with the training-frame checks: a NaN or out-of-range score names the fix."""
    s = np.asarray(scores, dtype="float64")
    if np.isnan(s).any():
        raise TargetError(f"content score has {int(np.isnan(s).sum())} NaN value(s). Fix: label every training "
                          "pair or drop unlabelled rows before building targets.")
    if len(s) and (s.min() < 0 or s.max() > 1):
        raise TargetError(f"content score must be in [0,1], got [{s.min():.3g}, {s.max():.3g}]. Fix: use "
                          "expected grade / 3.")
    if not alpha > 0:
        raise TargetError(f"alpha must be > 0, got {alpha}. Fix: use alpha=None for no sigmoid.")
    return np.asarray(_polarize(s, alpha, beta, rescale=rescale), dtype="float64")


def content_label(scores, alpha: float | None, beta: float = 0.5, rescale: bool = True) -> np.ndarray:
    """Polarized content label in [0,1]; alpha=None keeps the raw score (the 'no sigmoid' arm)."""
    if alpha is None:
        s = np.asarray(scores, dtype="float64")
        if np.isnan(s).any() or (len(s) and (s.min() < 0 or s.max() > 1)):
            raise TargetError("content score must be in [0,1] with no NaN. Fix: use expected grade / 3.")
        return s.copy()
    return polarize(scores, alpha, beta, rescale)


def engagement_label(frame: pd.DataFrame, cfg: EngagementConfig | None = None,
                     cols: FrameColumns | None = None) -> np.ndarray:
    """Engagement score in [0,1] from per-pair impressions, clicks, carts, purchases."""
    cfg, cols = cfg or EngagementConfig(), cols or FrameColumns()
    need = [cols.impressions, cols.clicks, cols.carts, cols.purchases]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise TargetError(f"engagement label needs column(s) {missing}. Fix: join the engagement counts of "
                          "the training window (or rename via TrainConfig.columns).")
    n = frame[cols.impressions].to_numpy(dtype="float64")
    if np.isnan(n).any() or (n < 0).any():
        raise TargetError(f"column '{cols.impressions}' must be >= 0 with no NaN. Fix: fill unseen pairs with 0.")
    score = np.zeros(len(frame))
    for col, w in ((cols.clicks, cfg.click_weight), (cols.carts, cfg.cart_weight),
                   (cols.purchases, cfg.purchase_weight)):
        e = frame[col].to_numpy(dtype="float64")
        if np.isnan(e).any() or (e < 0).any():
            raise TargetError(f"column '{col}' must be >= 0 with no NaN. Fix: fill unseen pairs with 0.")
        if w == 0:
            continue
        score += w * smoothed_rate(e, n, cfg.smoothing)
    score /= cfg.click_weight + cfg.cart_weight + cfg.purchase_weight
    if cfg.normalize == "query_max":
        mx = pd.Series(score).groupby(frame[cols.query_id].to_numpy()).transform("max").to_numpy()
        score = np.divide(score, mx, out=np.zeros_like(score), where=mx > 0)
    elif cfg.normalize == "global_max":
        score = score / score.max() if score.max() > 0 else score
    return np.clip(score, 0.0, 1.0)


def blend(content: np.ndarray, engagement: np.ndarray, weight: float, kind: str = "weighted",
          gate: float = 0.5) -> np.ndarray:
    """Blend content and engagement labels (see module docstring)."""
    c, e = np.asarray(content, dtype="float64"), np.asarray(engagement, dtype="float64")
    if c.shape != e.shape:
        raise TargetError(f"content {c.shape} and engagement {e.shape} labels differ in length. Fix: align rows.")
    if not 0 <= weight <= 1:
        raise TargetError(f"blend weight must be in [0,1], got {weight}.")
    if kind == "weighted":
        return weight * c + (1 - weight) * e
    if kind == "gated":
        return weight * c + (1 - weight) * e * (c >= gate)
    raise TargetError(f"blend kind {kind!r} unknown. Fix: use 'weighted' or 'gated'.")


def bucketize(y, n_buckets: int = 32) -> np.ndarray:
    """Map labels in [0,1] to integers 0..n_buckets-1 (<= 31, XGBoost's exponential-gain limit)."""
    if not 2 <= n_buckets <= 32:
        raise TargetError(f"n_buckets must be in 2..32, got {n_buckets}. Fix: XGBoost exp gain needs labels <= 31.")
    y = np.asarray(y, dtype="float64")
    return np.rint(np.clip(y, 0, 1) * (n_buckets - 1)).astype(np.int64)


def content_scores(frame: pd.DataFrame, cfg: TargetConfig, cols: FrameColumns) -> np.ndarray:
    """The raw content score the label starts from: columns.content_score, another column, or grade/3."""
    src = cfg.content_source or cols.content_score
    if src == "grade" or src == cols.grade:
        if cols.grade not in frame.columns:
            raise TargetError(f"content_source='grade' but the frame has no '{cols.grade}' column.")
        return frame[cols.grade].to_numpy(dtype="float64") / 3.0
    if src not in frame.columns:
        raise TargetError(f"content score column '{src}' not in the frame. Fix: join the LLM labels "
                          "(score in [0,1]) or set target.content_source.")
    return frame[src].to_numpy(dtype="float64")


def make_labels(frame: pd.DataFrame, cfg: TargetConfig | None = None,
                cols: FrameColumns | None = None) -> tuple[np.ndarray, bool]:
    """Training labels for `frame`; returns (labels, ndcg_exp_gain) ready for the XGBoost ranker."""
    cfg, cols = cfg or TargetConfig(), cols or FrameColumns()
    w = cfg.blend_weight
    c = content_label(content_scores(frame, cfg, cols), cfg.alpha, cfg.beta, cfg.rescale) if w > 0 else None
    e = engagement_label(frame, cfg.engagement, cols) if w < 1 else None
    if c is None:
        y = e
    elif e is None:
        y = c
    else:
        y = blend(c, e, w, cfg.blend, cfg.gate)
    if cfg.label_mode == "bucket":
        return bucketize(y, cfg.n_buckets).astype("float64"), True
    return y, False
