"""Engagement features from the impression log, point-in-time correct by construction.

For every key (a (query, product) pair, or a product) we emit a row at the start of each UTC day
d on which one of its windowed values changes; the row at day d aggregates only events on days
strictly before d (windows [d-w, d)). Between change days the values are constant, so Feast's
point-in-time join (latest row at or before the example's time, no TTL) reproduces exactly the dense
daily series without storing it. An example at time t therefore sees events before floor_day(t):
events later on the same day (and any future event) can never leak into it.

Per window w (default 7 and 28 days): impressions, clicks, add-to-cart, purchases; smoothed rates
(x + m*mu) / (n + m) with mu the global rate of all events before d; and a position-debiased CTR
(COEC: clicks over the clicks expected at the positions shown, smoothed towards 1). The position
prior P(click | position) is estimated from the log itself, using only days up to the impression's
own day, so it too never looks ahead of a row that uses it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ltr.data.engagement import smoothed_rate
from ltr.data.schemas import FEATURES, IMPRESSIONS

from .names import engagement_feature_names

_DAY_NS = 86_400 * 10**9
_BIG = 1 << 22  # > any day number since 1970 for centuries; separates keys in one sorted int64 axis
feature_names = engagement_feature_names  # e.g. eng_qp_ctr_7d; declared in features/names.py


def _days(ts: pd.Series) -> np.ndarray:
    return (ts.astype("datetime64[ns, UTC]").astype("int64").to_numpy() // _DAY_NS).astype(np.int64)


def position_expected_clicks(imp: pd.DataFrame, day: np.ndarray, strength: float = 10.0) -> np.ndarray:
    """P(click | position) for each impression, estimated from all impressions on days <= its own day.

    Smoothed towards the global CTR of the same period with `strength` pseudo-impressions, so rare
    deep positions do not get a prior of 0 or 1.
    """
    pos = imp["position"].to_numpy()
    frame = pd.DataFrame({"day": day, "pos": pos, "c": imp["clicked"].to_numpy(dtype=np.float64)})
    days, positions, prior = position_prior(frame.groupby(["day", "pos"])["c"].agg(["size", "sum"]), strength)
    return prior[days.get_indexer(day), positions.get_indexer(pos)]


def position_prior(g: pd.DataFrame, strength: float) -> tuple[pd.Index, pd.Index, np.ndarray]:
    """(days, positions, prior[day, position]) from impressions ("size") and clicks ("sum") per (day, pos).

    Shared by the in-memory and the out-of-core (`features.engagement_sql`) paths: both aggregate to this
    small table first, so the two priors are the same numbers to the last bit.
    """
    n = g["size"].unstack(fill_value=0).sort_index().cumsum()
    c = g["sum"].astype(np.float64).unstack(fill_value=0.0).sort_index().cumsum()
    mu = (c.sum(axis=1) / n.sum(axis=1)).to_numpy()[:, None]
    prior = (c.to_numpy() + strength * mu) / (n.to_numpy() + strength)
    return n.index, n.columns, prior


def _windowed(keys: pd.DataFrame, day: np.ndarray, vals: np.ndarray, windows: list[int],
              g_days: np.ndarray, g_cum: np.ndarray, m: float, prefix: str) -> pd.DataFrame:
    """Change-point rows of windowed sums and smoothed rates for one key set.

    vals columns: impressions, clicks, atc, purchases, expected clicks. g_days/g_cum: global daily
    totals (sorted days; cumulative sums with a leading zero row) used for the smoothing means.
    """
    key_cols = list(keys.columns)
    code = keys.groupby(key_cols, sort=False).ngroup().to_numpy().astype(np.int64)
    comb_all = code * _BIG + day
    order = np.argsort(comb_all, kind="stable")
    comb_sorted = comb_all[order]
    uniq, first = np.unique(comb_sorted, return_index=True)
    daily = np.add.reduceat(vals[order], first, axis=0) if len(first) else np.zeros((0, vals.shape[1]))
    cp_code, cp_day, out = change_point_rows(uniq, daily, windows, g_days, g_cum, m, prefix)
    first_rows = np.unique(code, return_index=True)[1]
    key_table = keys.iloc[first_rows].reset_index(drop=True)  # row i holds the key of code i
    res = key_table.iloc[cp_code].reset_index(drop=True)
    res["event_timestamp"] = day_timestamps(cp_day)
    return pd.concat([res, pd.DataFrame(out)], axis=1)


def day_timestamps(day: np.ndarray) -> pd.Series:
    """Start of each UTC day number, as the features' event_timestamp (microseconds, UTC)."""
    return pd.Series(pd.to_datetime(day * _DAY_NS, utc=True).astype("datetime64[us, UTC]"))


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique of a few concatenated sorted runs: a stable sort merges the runs in linear time, where this
    numpy's hash-based np.unique took seconds per million values."""
    x = np.sort(x, kind="stable")
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def change_point_rows(uniq: np.ndarray, daily: np.ndarray, windows: list[int], g_days: np.ndarray,
                      g_cum: np.ndarray, m: float, prefix: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(key code, day, features) of every change point, from per-(key, day) sums.

    uniq: sorted code * _BIG + day of the days a key had events; daily: their sums (impressions, clicks,
    atc, purchases, expected clicks). A key's values change the day after an event day and the day after
    it leaves each window. Shared with the out-of-core path, which feeds it one chunk of keys at a time.
    """
    cs = np.vstack([np.zeros((1, daily.shape[1])), np.cumsum(daily, axis=0)])
    cps = _sorted_unique(np.concatenate([uniq + 1 + w for w in [0] + list(windows)]))
    cp_code, cp_day = cps // _BIG, cps % _BIG
    hi = np.searchsorted(uniq, cps, side="left")
    gi = np.searchsorted(g_days, cp_day, side="left")  # global events on days < cp_day
    gtot = g_cum[gi]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = gtot[:, 1:4] / gtot[:, [0]]
    out: dict[str, np.ndarray] = {}
    for w in windows:
        lo = np.searchsorted(uniq, cps - w, side="left")
        s = cs[hi] - cs[lo]
        n, cl, atc, pur, exp = s.T
        out[f"{prefix}_impr_{w}d"] = n
        out[f"{prefix}_clicks_{w}d"] = cl
        out[f"{prefix}_atc_{w}d"] = atc
        out[f"{prefix}_purch_{w}d"] = pur
        out[f"{prefix}_ctr_{w}d"] = smoothed_rate(cl, n, m, prior=mu[:, 0])
        out[f"{prefix}_atc_rate_{w}d"] = smoothed_rate(atc, n, m, prior=mu[:, 1])
        out[f"{prefix}_purch_rate_{w}d"] = smoothed_rate(pur, n, m, prior=mu[:, 2])
        out[f"{prefix}_coec_{w}d"] = smoothed_rate(cl, exp, m, prior=1.0)  # clicks over expected clicks
    return cp_code, cp_day, {k: out[k] for k in feature_names(prefix, windows)}


def engagement_features(impressions: pd.DataFrame, windows: list[int] = (7, 28), smoothing: float = 10.0,
                        position_prior_strength: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(query-product features, product features) as change-point time series.

    Returns two frames: [query_id, product_id, event_timestamp, eng_qp_*] and
    [product_id, event_timestamp, eng_p_*]. A row at day d uses only events before d (see module doc).
    """
    windows = sorted(int(w) for w in windows)
    if not windows or any(w < 1 for w in windows):
        raise ValueError(f"windows must be positive day counts, got {windows}. Fix: e.g. windows=[7, 28].")
    imp = IMPRESSIONS.validate(impressions, where="engagement_features")
    if imp.empty:
        qp_cols = ["query_id", "product_id", "event_timestamp"] + feature_names("eng_qp", windows)
        p_cols = ["product_id", "event_timestamp"] + feature_names("eng_p", windows)
        empty_ts = pd.Series([], dtype="datetime64[us, UTC]")
        qp = pd.DataFrame({c: pd.Series([], dtype="float64") for c in qp_cols}).astype(
            {"query_id": object, "product_id": object})
        p = pd.DataFrame({c: pd.Series([], dtype="float64") for c in p_cols}).astype({"product_id": object})
        qp["event_timestamp"], p["event_timestamp"] = empty_ts, empty_ts
        return qp, p
    day = _days(imp["ts"])
    exp = position_expected_clicks(imp, day, position_prior_strength)
    vals = np.column_stack([np.ones(len(imp)), imp["clicked"].to_numpy(np.float64),
                            imp["added_to_cart"].to_numpy(np.float64), imp["purchased"].to_numpy(np.float64), exp])
    g = pd.DataFrame(vals[:, :4]).groupby(day).sum().sort_index()
    g_days = g.index.to_numpy(np.int64)
    g_cum = np.vstack([np.zeros((1, 4)), np.cumsum(g.to_numpy(), axis=0)])
    qp = _windowed(imp[["query_id", "product_id"]].reset_index(drop=True), day, vals, windows, g_days, g_cum,
                   smoothing, "eng_qp")
    p = _windowed(imp[["product_id"]].reset_index(drop=True), day, vals, windows, g_days, g_cum, smoothing, "eng_p")
    qp = FEATURES.validate(qp, where="engagement query-product features")
    return qp, p
