"""Engagement arithmetic that features, targets, metrics and the pipeline share: per-pair counts from an
impressions log, and the smoothed rate.

Why one place: a rate over few impressions is noise, so every user of engagement shrinks it toward a
prior with m pseudo-impressions, (events + m * prior) / (impressions + m). Features, labels and metrics
must shrink the same way, or a model would be trained on one notion of CTR and judged on another.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: the impressions table's event flags and the count column each one becomes
EVENT_COUNTS = {"clicked": "clicks", "added_to_cart": "carts", "purchased": "purchases"}
COUNT_COLUMNS = ("impressions", *EVENT_COUNTS.values())


def smoothed_rate(events, impressions, smoothing: float, prior=None) -> np.ndarray:
    """(events + smoothing * prior) / (impressions + smoothing), elementwise.

    `prior` is a scalar or an array broadcast against the counts; None takes the global rate
    sum(events) / sum(impressions) (0 when there were no impressions). Where the denominator is 0 (no
    impressions and no smoothing) the rate is 0.
    """
    e = np.asarray(events, dtype="float64")
    n = np.asarray(impressions, dtype="float64")
    if prior is None:
        prior = e.sum() / n.sum() if n.sum() > 0 else 0.0
    den = n + smoothing
    return np.divide(e + smoothing * prior, den, out=np.zeros(np.broadcast(e, den).shape), where=den > 0)


def pair_counts(impressions: pd.DataFrame, start: pd.Timestamp | None = None,
                end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per (query_id, product_id): impressions, clicks, carts, purchases of the log rows in [start, end).

    Sorted by (query_id, product_id), float64 counts: the engagement half of a training frame.
    """
    imp = impressions
    if start is not None:
        imp = imp[imp["ts"] >= start]
    if end is not None:
        imp = imp[imp["ts"] < end]
    g = imp.groupby(["query_id", "product_id"], sort=True)
    cols = {"impressions": g.size()}
    cols.update({name: g[flag].sum() for flag, name in EVENT_COUNTS.items()})
    return pd.DataFrame(cols).astype("float64").reset_index()
