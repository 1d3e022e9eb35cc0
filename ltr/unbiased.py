"""Unbiased LambdaMART on raw click logs: XGBoost's own position debiasing (`lambdarank_unbiased`).

Why a second way to learn from engagement: the experiments' engagement labels are smoothed rates per
(query, product) pair, so a pair the old ranker kept at position 1 looks better than one it kept at 8.
Unbiased LambdaMART (Hu et al., WWW 2019; built into XGBoost >= 2) trains on the impressions themselves,
one row per shown result with label clicked, and learns the position bias jointly with the ranker: each
pair of a clicked and an unclicked result in a search is weighted by 1 / (t+_i * t-_j), the click and
non-click propensities at their logged positions, which XGBoost re-estimates every round.

How XGBoost knows a row's position: from its order inside the query group, nothing else (the objective
indexes t+ and t- by the row's index in the group, "the label list is assumed to be sorted"). So each
group here is one search (request_id), sorted by logged position, and a search must hold positions
1..n exactly once each; a search with a gap would silently shift every position below it, so `fit`
refuses it and `click_rows` drops such searches (counted). Only the first `max_position` positions are
kept: XGBoost tracks t+ / t- up to its top-k truncation, which is set to `max_position`.

Where the propensities live: the booster's saved config, `learner.objective["ti+"]` and `["tj-"]`,
normalised by XGBoost to position 1 = 1 as `ltr.counterfactual.propensity` reports its curve. They are
t+ = (L_i / L_1) ** (1 / (1 + lambdarank_bias_norm)), a regularised ratio of lambda-weighted losses from
the last round trained, not a maximum-likelihood examination curve: the exponent alone moves them a lot
(docs/unbiased.md has the figures), so read them beside intervention harvesting, never instead of it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .counterfactual.logs import ImpressionLog
from .counterfactual.propensity import InterventionHarvesting, propensity_curve
from .data.splits import grouped_split
from .rankers import RankerError, XGBLambdaMART, _as_frame

#: the impression columns the click arm reads (ltr.data.schemas.IMPRESSIONS names them)
CLICK_COLUMNS = ("request_id", "query_id", "product_id", "position", "clicked")
WINDOWS = ("labels", "features")


class UnbiasedError(RankerError):
    """Bad input to the click ranker; the message names the field and the fix."""


def complete_searches(search: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Per row: does its search hold positions 1..n once each? `search` codes and `position` must already be
    sorted by (search, position): then a row is in place exactly when its position is its rank in the search."""
    start = np.r_[True, search[1:] != search[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(search)), 0))
    return _whole_search(search, position == np.arange(len(search)) - first + 1)


def _whole_search(search: np.ndarray, row_ok: np.ndarray) -> np.ndarray:
    """Per row: is every row of its search ok?"""
    n = int(search.max()) + 1 if len(search) else 0
    return ~(np.bincount(search, weights=(~row_ok).astype(float), minlength=n) > 0)[search]


def _positions(position, n: int) -> np.ndarray:
    pos = pd.to_numeric(pd.Series(np.asarray(position)), errors="coerce").to_numpy(dtype="float64")
    if len(pos) != n:
        raise UnbiasedError(f"position has {len(pos)} rows, X has {n}. Fix: one logged position per impression.")
    if np.isnan(pos).any() or (pos < 1).any() or (pos != np.round(pos)).any():
        raise UnbiasedError("column 'position' must hold integers >= 1 (the rank the search showed). Fix: add 1 to "
                            "0-based ranks (UBI's position.ordinal is 0-based) and drop rows without one.")
    return pos.astype(np.int64)


def _clicks(y, n: int) -> np.ndarray:
    y = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").to_numpy(dtype="float64")
    if len(y) != n:
        raise UnbiasedError(f"clicked has {len(y)} rows, X has {n}. Fix: one click flag per impression.")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise UnbiasedError("column 'clicked' must be 0/1 (or bool) with no NaN. Fix: pass the raw click flag of "
                            "each impression, not a rate.")
    if y.sum() == 0:
        raise UnbiasedError(f"column 'clicked' has no click in {n} impressions: nothing to learn from. Fix: check "
                            "that clicks were ingested, or widen the log window.")
    return y


class UnbiasedLambdaMART(XGBLambdaMART):
    """XGBoost LambdaMART on impressions (label: clicked), position bias learnt jointly (module docstring).

    fit(X, y, qid, position, query=None): qid is the search (request id), position the logged 1-based rank,
    query the query id that the early-stopping split holds out whole (default: qid). lambdarank_unbiased=False
    is the naive fit on the same rows (the control). Fitted: propensities_ (t+ at positions 1..max_position,
    position 1 = 1; None for the naive fit), propensities_unclicked_ (t-), plus XGBLambdaMART's attributes.
    """

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.1, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, max_bin: int = 256, eval_at: int = 10,
                 early_stopping_rounds: int | None = 30, validation_fraction: float = 0.2, n_jobs: int = 2,
                 random_state: int = 0, max_position: int = 10, lambdarank_unbiased: bool = True,
                 lambdarank_bias_norm: float = 1.0, monotone: bool = False):
        super().__init__(n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_child_weight=min_child_weight, subsample=subsample, colsample_bytree=colsample_bytree,
                         reg_lambda=reg_lambda, max_bin=max_bin, eval_at=eval_at,
                         early_stopping_rounds=early_stopping_rounds, validation_fraction=validation_fraction,
                         n_jobs=n_jobs, random_state=random_state, monotone=monotone)
        self.max_position = max_position
        self.lambdarank_unbiased = lambdarank_unbiased
        self.lambdarank_bias_norm = lambdarank_bias_norm

    def _check_params(self) -> None:
        if not isinstance(self.max_position, (int, np.integer)) or isinstance(self.max_position, bool) \
                or self.max_position < 2:
            raise UnbiasedError(f"max_position={self.max_position!r}: must be an int >= 2. Fix: the depth of the "
                                "log to learn from, e.g. 10 (one search page).")
        if not isinstance(self.lambdarank_unbiased, (bool, np.bool_)):
            raise UnbiasedError(f"lambdarank_unbiased={self.lambdarank_unbiased!r}: must be True or False.")
        if not (np.isfinite(self.lambdarank_bias_norm) and self.lambdarank_bias_norm >= 0):
            raise UnbiasedError(f"lambdarank_bias_norm={self.lambdarank_bias_norm!r}: must be a finite number >= 0. "
                                "Fix: XGBoost's default is 1.0 (t+ is the loss ratio to the power 1/(1+norm)).")

    def _xgb_params(self, with_es: bool, feature_names: Sequence[str] = ()) -> dict:
        # top-k truncation = the log's depth: every pair of the shown page counts, and XGBoost tracks t+/t-
        # for exactly those positions (it sizes them by the truncation)
        return super()._xgb_params(with_es, feature_names) | {
            "lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": int(self.max_position),
            "lambdarank_unbiased": bool(self.lambdarank_unbiased),
            "lambdarank_bias_norm": float(self.lambdarank_bias_norm)}

    def fit(self, X, y, qid, position, query=None, feature_names: Sequence[str] | None = None,
            verbose: bool = False) -> UnbiasedLambdaMART:
        self._check_params()
        Xf = _as_frame(X, feature_names)
        y, pos = _clicks(y, len(Xf)), _positions(position, len(Xf))
        search = pd.factorize(pd.Series(np.asarray(qid)), sort=True)[0]
        if len(search) != len(Xf):
            raise UnbiasedError(f"qid has {len(search)} rows, X has {len(Xf)}. Fix: one request id per impression.")
        groups = np.asarray(qid if query is None else query)
        top = np.flatnonzero(pos <= self.max_position)
        order = top[np.lexsort((pos[top], search[top]))]
        bad = ~complete_searches(search[order], pos[order])
        if bad.any():
            raise UnbiasedError(
                f"column 'position': {len(np.unique(search[order][bad]))} search(es) do not hold positions 1..n "
                "once each (a gap or a repeat), and XGBoost reads a row's position from its order in the search, "
                "so every position below a gap would shift. Fix: pass whole searches (ltr.unbiased.click_rows "
                "drops incomplete ones).")
        Xs, ys, ss, gs = Xf.iloc[order].reset_index(drop=True), y[order], search[order], groups[order]
        super().fit(*self._split(Xs, ys, ss, gs), verbose=verbose)
        self.propensities_, self.propensities_unclicked_ = self._learnt("ti+"), self._learnt("tj-")
        return self

    def _split(self, X: pd.DataFrame, y: np.ndarray, search: np.ndarray, query: np.ndarray) -> tuple:
        """(X, y, qid, eval_set) with whole queries held out for early stopping (a query's searches share its
        pairs, so splitting by search would validate on pairs the trees trained on); eval_set is None without
        early stopping (then the parent does not split either)."""
        if not (self.early_stopping_rounds and self.validation_fraction > 0):
            return X, y, search, None
        if len(pd.unique(query)) < 4:
            raise UnbiasedError(f"early stopping holds out whole queries, but the log has {len(pd.unique(query))}. "
                                "Fix: early_stopping_rounds=None, or log at least 4 queries.")
        tr, va = grouped_split(query, [1 - self.validation_fraction, self.validation_fraction], self.random_state)
        ev = (X.loc[va].reset_index(drop=True), y[va], search[va])
        return X.loc[tr].reset_index(drop=True), y[tr], search[tr], ev

    def _learnt(self, key: str) -> np.ndarray | None:
        if not self.lambdarank_unbiased:
            return None
        obj = json.loads(self.model_.get_booster().save_config())["learner"]["objective"]
        t = np.asarray(obj[key], dtype="float64")[: self.max_position]
        return t / t[0] if t[0] > 0 else t


# --- the click arm's data: the log as the experiments hand it over ----------------------------------

@dataclass(frozen=True)
class ClickLog:
    """Raw impressions for the click arms, with the run's engagement cutoff and, for the built-in world, the
    true examination curve (positions 1..len). Validated once, by the counterfactual code's own checks."""

    impressions: pd.DataFrame
    cutoff: pd.Timestamp | None = None
    true_examination: np.ndarray | None = None

    def __post_init__(self) -> None:
        ImpressionLog.from_frame(self.impressions, outcomes=("clicked",), where="clicks.impressions")
        if self.cutoff is not None and "ts" not in self.impressions.columns:
            raise UnbiasedError("clicks.impressions is missing column 'ts', needed to keep the cutoff's window. "
                                "Fix: pass the log's timestamps, or cutoff=None to use every impression.")

    @classmethod
    def from_dataset(cls, ds: Any, cutoff: pd.Timestamp | None) -> ClickLog:
        """The dataset's impressions.parquet (only the columns the arm reads); the truth when it is the world."""
        cols = [*CLICK_COLUMNS, "ts"] if cutoff is not None else list(CLICK_COLUMNS)
        imp = pd.read_parquet(ds.impressions_path, columns=cols)
        return cls(imp, cutoff, world_examination(ds.metadata))

    def rows(self, queries, window: str = "labels") -> pd.DataFrame:
        """Impressions of `queries` in `window`: 'labels' = from the cutoff on (the window the smoothed-rate
        labels count), 'features' = before it (the window the engagement features count)."""
        if window not in WINDOWS:
            raise UnbiasedError(f"click window {window!r} unknown. Fix: use one of {list(WINDOWS)}.")
        imp = self.impressions[self.impressions["query_id"].isin(set(queries))]
        if self.cutoff is not None:
            after = imp["ts"] >= self.cutoff
            imp = imp[after if window == "labels" else ~after]
        return imp


def world_examination(metadata: dict, k: int = 10) -> np.ndarray | None:
    """The built-in world's examination 1/k**eta at positions 1..k, relative to position 1; None elsewhere."""
    if metadata.get("source") != "world":
        return None
    from .sim.click_model import ClickModel, examination
    eta = ClickModel(**metadata.get("config", {}).get("click_model", {})).eta
    return examination(np.arange(1, k + 1), eta)


def click_rows(impressions: pd.DataFrame, frame: pd.DataFrame, features: list[str], qcol: str = "query_id",
               pcol: str = "product_id", max_position: int = 10) -> tuple[pd.DataFrame, dict[str, int]]:
    """Impressions in the top `max_position` with their pair's features joined from the training frame, sorted
    by (search, position); searches with a pair the frame lacks or a position gap are dropped (counted)."""
    feats = frame[[qcol, pcol, *features]].rename(columns={qcol: "query_id", pcol: "product_id"})
    imp = impressions[pd.to_numeric(impressions["position"]) <= max_position]
    rows = imp.merge(feats, on=["query_id", "product_id"], how="left", indicator=True)
    rows = rows.sort_values(["request_id", "position"], kind="stable").reset_index(drop=True)
    search = pd.factorize(rows["request_id"], sort=True)[0]
    keep = (complete_searches(search, rows["position"].to_numpy(dtype=np.int64))
            & _whole_search(search, (rows["_merge"] == "both").to_numpy()))
    info = {"impressions": int(keep.sum()), "searches": int(len(np.unique(search[keep]))),
            "searches_dropped": int(len(np.unique(search[~keep])))}
    return rows.loc[keep].drop(columns="_merge").reset_index(drop=True), info


def fit_on_clicks(model: UnbiasedLambdaMART, rows: pd.DataFrame, features: list[str]) -> UnbiasedLambdaMART:
    """`model` fitted on `click_rows` output: search = request_id, label = clicked, held out by query."""
    return model.fit(rows[features], rows["clicked"].astype(float), rows["request_id"].to_numpy(),
                     rows["position"].to_numpy(), query=rows["query_id"].to_numpy())


# --- propensities beside the truth -----------------------------------------------------------------

def harvested_curve(impressions: pd.DataFrame, max_position: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Intervention harvesting on the same impressions (ltr.counterfactual), as a JSON-ready dict."""
    log = ImpressionLog.from_frame(impressions, outcomes=("clicked",), where="click arm impressions")
    _, curve = propensity_curve(log, n_boot=n_boot, seed=seed, model=InterventionHarvesting(max_position))
    return curve.to_dict()


def max_relative_error(curve, truth, positions: int = 10) -> float | None:
    """max |curve / truth - 1| at positions 1..`positions` (both relative to position 1); None without truth."""
    if curve is None or truth is None:
        return None
    n = min(positions, len(curve), len(truth))
    c, t = np.asarray(curve, float)[:n], np.asarray(truth, float)[:n]
    return float(np.abs(c / c[0] / (t / t[0]) - 1).max())


def propensity_report(learnt: dict[int, list[float]], harvested: dict[int, list[float]],
                      truth: np.ndarray | None, positions: int = 10) -> dict[str, Any]:
    """Per seed and as the mean over seeds: XGBoost's t+, the harvested curve, the truth, and the max relative
    error of each vs the truth at positions 1..`positions`."""
    def block(curves: dict[int, list[float]]) -> dict[str, Any]:
        mean = np.mean([np.asarray(c, float) for c in curves.values()], axis=0)
        return {"per_seed": {str(s): np.round(c, 5).tolist() for s, c in curves.items()},
                "mean": np.round(mean, 5).tolist(),
                "max_rel_error_vs_truth": max_relative_error(mean, truth, positions),
                "max_rel_error_vs_truth_per_seed": {str(s): max_relative_error(c, truth, positions)
                                                    for s, c in curves.items()}}
    k = len(next(iter(learnt.values())))
    return {"positions": list(range(1, k + 1)), "normalised_to": "position 1",
            "xgboost_lambdarank_unbiased": block(learnt), "intervention_harvesting": block(harvested),
            "truth": None if truth is None else np.round(np.asarray(truth, float)[:k], 5).tolist(),
            "error_positions": f"1-{min(positions, k)}"}


__all__ = ["CLICK_COLUMNS", "ClickLog", "UnbiasedError", "UnbiasedLambdaMART", "click_rows", "complete_searches",
           "fit_on_clicks", "harvested_curve", "max_relative_error", "propensity_report", "world_examination"]
