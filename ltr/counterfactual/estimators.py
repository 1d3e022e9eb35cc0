"""Offline estimates of a new ranking's engagement (clicks, add-to-carts per search in the top k) from a
log collected under another ranker, with bootstrap intervals.

The log shows each result at the position the logging ranker chose, so its clicks say how the *old*
ranking did. Under the position-based model a pair d's outcome at position k has expectation
theta_k * mu_d (mu_d: the outcome's rate once the result is examined; for add-to-carts the click and the
cart given a click), so a new ranking that puts d at rank r expects theta_r * mu_d from it. Every
estimator here is a way of learning mu_d for the new ranking's top k:

- logging: the log's own outcomes per search in the top k, the ranker the log was collected under.
- ips (clipped): each logged outcome of d weighs w_d = theta_r / rho_d, where rho_d is the examination d
  got from the logging ranker on average over the query's searches (Oosterhuis & de Rijke, "Policy-aware
  unbiased learning to rank for top-k rankings", SIGIR 2020: a ranker whose order churns shows d at
  several positions and sometimes not at all). Unbiased when every result of the new top k was sometimes
  shown by the logging ranker; a result it never showed counts 0 (a downward bias the `support` figure
  measures). Weights are clipped at `clip`: less variance, a downward bias for rarely shown results.
- snips: the clipped IPS sum divided by the examination mass its weights reached (sum_d w_d rho_d) and
  multiplied by the mass of the new top k (sum_r theta_r): results the log cannot speak for, clipped or
  never shown, are taken to do as well as the query's others. The self-normalised estimator's control
  variate, whose expectation is known here because the examination curve is.
- dm: the direct model alone: theta_r * mu_hat_d from a regression on pair features (`DirectModel`).
- dr (doubly robust): the direct model plus the IPS estimate of its error on what the log showed. With
  unclipped weights it is IPS on the results the log showed and the direct model on those it never did;
  right when either the propensities or the direct model are.

The intervals are percentile bootstraps of Poisson-weighted queries (unit='query', the default) or
searches (unit='search'); each replicate re-estimates the examination curve, so its error is in the
interval; the direct model is fitted once. Why queries by default: a result the logging ranker showed
once or twice has an estimated rate resting on those few searches, and resampling searches keeps or
drops them whole, so it never sees how far that rate could be off; the search bootstrap's interval is
too narrow for it (measured in docs/counterfactual.md). Resampling queries carries every query's error,
rare results included, at the price of also carrying how much the queries differ from one another.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.engagement import smoothed_rate

from .logs import CounterfactualError, ImpressionLog, bootstrap_weights
from .propensity import InterventionHarvesting, _Propensity

ESTIMATORS = ("ips", "snips", "dm", "dr")


def _rank_within_query(ranking: pd.DataFrame, where: str) -> pd.DataFrame:
    """query_id, product_id, rank (1-based by descending score, ties by product_id) of a scored candidate list."""
    for col in ("query_id", "product_id", "score"):
        if col not in ranking.columns:
            raise CounterfactualError(f"{where} is missing column '{col}'. Fix: pass one row per candidate "
                                      "with query_id, product_id and the new ranker's score (higher ranks first).")
    r = ranking[["query_id", "product_id", "score"]].copy()
    r["score"] = pd.to_numeric(r["score"], errors="coerce")
    if r["score"].isna().any():
        raise CounterfactualError(f"{where}: column 'score' has {int(r['score'].isna().sum())} missing or "
                                  "non-numeric value(s). Fix: score every candidate (a NaN has no rank).")
    if r.duplicated(["query_id", "product_id"]).any():
        raise CounterfactualError(f"{where}: a (query_id, product_id) pair appears twice. Fix: one row per "
                                  "candidate.")
    r = r.sort_values(["query_id", "score", "product_id"], ascending=[True, False, True], kind="stable")
    r["rank"] = r.groupby("query_id", sort=False).cumcount() + 1
    return r.reset_index(drop=True)


class DirectModel:
    """Per-examination rate mu_d of an outcome for any (query, product) pair, logged or not.

    A gradient-boosted Poisson regression of each logged pair's outcomes on its features, with the
    examination the pair got as exposure (sample weight, target outcomes / examination), then each logged
    pair's own rate shrunk towards that prediction with `smoothing` pseudo-examinations
    (`ltr.data.engagement.smoothed_rate`, the engagement features' smoothing). Why both: the regression
    speaks for pairs the log never showed; a pair the log showed often is best told by its own rate.
    `features`: query_id, product_id and numeric columns (NaN allowed) for every candidate pair; without
    features the regression is the query's mean rate.
    """

    def __init__(self, smoothing: float = 20.0, max_iter: int = 200, random_state: int = 0):
        if not smoothing >= 0:
            raise CounterfactualError(f"smoothing must be >= 0, got {smoothing!r}.")
        self.smoothing = smoothing
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, log: ImpressionLog, examination: np.ndarray, outcome: str,
            features: pd.DataFrame | None = None) -> DirectModel:
        """`examination`: theta at each impression of `log` (0 where not modelled)."""
        if outcome not in log.outcomes:
            raise CounterfactualError(f"outcome '{outcome}' was not coded in the log. Fix: "
                                      f"ImpressionLog.from_frame(df, outcomes=(..., '{outcome}')).")
        n_pairs = len(log.pairs)
        exposure = np.bincount(log.pair, weights=examination, minlength=n_pairs)
        events = np.bincount(log.pair, weights=log.outcomes[outcome] * (examination > 0), minlength=n_pairs)
        qcode = log.pair_query
        q_rate = (np.bincount(qcode, weights=events, minlength=len(log.queries))
                  / np.maximum(np.bincount(qcode, weights=exposure, minlength=len(log.queries)), 1e-12))
        self.query_rate_ = pd.Series(q_rate, index=log.queries)
        self.columns_: list[str] = []
        self.regressor_ = None
        if features is not None:
            self._fit_regression(log, features, exposure, events)
        prior = self._prior(log.pairs, features)
        own = smoothed_rate(events, exposure, self.smoothing, prior=prior)
        self.pair_rate_ = pd.Series(np.clip(own, 0.0, 1.0), index=self._keys(log.pairs))
        self.features_ = features
        return self

    def _fit_regression(self, log: ImpressionLog, features: pd.DataFrame, exposure: np.ndarray,
                        events: np.ndarray) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        for col in ("query_id", "product_id"):
            if col not in features.columns:
                raise CounterfactualError(f"direct-model features are missing column '{col}'. Fix: one row per "
                                          "candidate pair with query_id, product_id and numeric feature columns.")
        self.columns_ = [c for c in features.columns if c not in ("query_id", "product_id")
                         and pd.api.types.is_numeric_dtype(features[c])]
        if not self.columns_:
            raise CounterfactualError("direct-model features have no numeric column. Fix: add pair features "
                                      "(e.g. retrieval score, popularity, price, discount).")
        X = self._matrix(log.pairs, features)
        fit_rows = exposure > 0
        reg = HistGradientBoostingRegressor(loss="poisson", max_iter=self.max_iter, learning_rate=0.05,
                                            max_leaf_nodes=15, min_samples_leaf=20, random_state=self.random_state)
        with threadpool_limits(1):  # a few thousand pairs: on a busy machine threads only wait on each other
            reg.fit(X[fit_rows], events[fit_rows] / exposure[fit_rows], sample_weight=exposure[fit_rows])
        self.regressor_ = reg

    @staticmethod
    def _keys(pairs: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays([pairs["query_id"].astype(str), pairs["product_id"].astype(str)])

    def _matrix(self, pairs: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
        table = features.drop_duplicates(["query_id", "product_id"]).set_index(self._keys(
            features.drop_duplicates(["query_id", "product_id"])))[self.columns_]
        return table.reindex(self._keys(pairs)).to_numpy(dtype="float64")

    def _prior(self, pairs: pd.DataFrame, features: pd.DataFrame | None) -> np.ndarray:
        base = self.query_rate_.reindex(pairs["query_id"].astype(str)).fillna(self.query_rate_.mean()).to_numpy()
        if self.regressor_ is None or features is None:
            return base
        X = self._matrix(pairs, features)
        known = ~np.isnan(X).all(axis=1)
        out = base.copy()
        if known.any():
            from threadpoolctl import threadpool_limits
            with threadpool_limits(1):
                out[known] = self.regressor_.predict(X[known])
        return out

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """mu_hat for each (query_id, product_id) row: the logged pair's shrunk rate, else the regression."""
        own = self.pair_rate_.reindex(self._keys(pairs)).to_numpy()
        prior = self._prior(pairs, self.features_)
        return np.clip(np.where(np.isnan(own), prior, own), 0.0, 1.0)


@dataclass(frozen=True)
class _Target:
    """The new ranking's top k, aligned to the log: one row per (query, result) with its rank and pair code."""

    query: np.ndarray      # query code in the log
    pair: np.ndarray       # pair code in the log, -1 if the log never showed the pair
    rank: np.ndarray
    mu: dict[str, np.ndarray]


class OfflineEvaluator:
    """Clicks and add-to-carts per search in a new ranking's top k, estimated from a log (module docstring).

    Parameters: k (the top k counted; the log's positions beyond the propensity curve are not used),
    clip (largest IPS weight), n_boot and unit (bootstrap), outcomes, propensity (an unfitted estimator
    from ltr.counterfactual.propensity; default InterventionHarvesting), smoothing (of the direct model).
    `fit(log, features)` learns the examination curve and the direct model; `evaluate(ranking)` returns
    the estimates for that ranking and for the logging ranker, each with a 95% interval, and the difference.
    """

    def __init__(self, k: int = 10, clip: float = 100.0, n_boot: int = 200, unit: str = "query", seed: int = 0,
                 outcomes: Sequence[str] = ("clicked", "added_to_cart"), propensity: _Propensity | None = None,
                 smoothing: float = 20.0):
        if not isinstance(k, int) or k < 1:
            raise CounterfactualError(f"k must be a positive int, got {k!r}. Fix: e.g. k=10.")
        if not clip >= 1:
            raise CounterfactualError(f"clip must be >= 1 (weights below 1 are never clipped), got {clip!r}.")
        if not isinstance(n_boot, int) or n_boot < 2:
            raise CounterfactualError(f"n_boot must be an int >= 2, got {n_boot!r}.")
        if unit not in ("search", "query"):
            raise CounterfactualError(f"unit={unit!r}. Fix: use 'search' or 'query'.")
        self.k, self.clip, self.n_boot, self.unit, self.seed = k, float(clip), n_boot, unit, seed
        self.outcomes = tuple(outcomes)
        self.propensity = propensity
        self.smoothing = smoothing

    def fit(self, log: ImpressionLog, features: pd.DataFrame | None = None) -> OfflineEvaluator:
        missing = [o for o in self.outcomes if o not in log.outcomes]
        if missing:
            raise CounterfactualError(f"the log was coded without {missing}. Fix: ImpressionLog.from_frame(df, "
                                      f"outcomes={self.outcomes}).")
        self.log_ = log
        self.propensity_ = (self.propensity or InterventionHarvesting()).fit(log)
        if len(self.propensity_.examination_) < self.k:
            raise CounterfactualError(f"the log shows {len(self.propensity_.examination_)} positions, fewer than "
                                      f"k={self.k}. Fix: pass k <= the log's depth.")
        theta = self.propensity_.predict(log.position)
        self.direct_ = {o: DirectModel(self.smoothing).fit(log, theta, o, features) for o in self.outcomes}
        return self

    def _target(self, ranking: pd.DataFrame) -> _Target:
        r = _rank_within_query(ranking, "ranking")
        lost = self.log_.queries.difference(pd.Index(r["query_id"].astype(str).unique()))
        if len(lost):
            raise CounterfactualError(f"ranking has no row for {len(lost)} logged query_id(s), e.g. "
                                      f"{list(lost[:3])}. Fix: score the candidates of every query in the log.")
        top = r[(r["rank"] <= self.k) & r["query_id"].isin(self.log_.queries)].reset_index(drop=True)
        mu = {o: self.direct_[o].predict(top) for o in self.outcomes}
        return _Target(self.log_.queries.get_indexer(top["query_id"].astype(str)), self.log_.pair_codes(top),
                       top["rank"].to_numpy(dtype=np.int64), mu)

    def _values(self, target: _Target, search_weight: np.ndarray | None) -> dict[str, dict[str, float]]:
        """Every estimate for one weighting of the searches (None: the log as it is)."""
        log, n_q = self.log_, len(self.log_.queries)
        if search_weight is None:
            theta_k = self.propensity_.examination_
        else:
            theta_k = self.propensity_.fit_theta(log, search_weight, init=self.propensity_.examination_)
        w_imp = np.ones(len(log.pair)) if search_weight is None else search_weight[log.search]
        pos_theta = np.where(log.position <= len(theta_k), theta_k[np.minimum(log.position, len(theta_k)) - 1], 0.0)
        modelled = pos_theta > 0
        searches = log.searches_per_query(search_weight)
        total = searches.sum()
        n_pair = len(log.pairs)
        pair_q = log.pair_query
        rho = np.bincount(log.pair, weights=w_imp * pos_theta, minlength=n_pair) / np.maximum(searches[pair_q], 1e-12)
        t = theta_k[target.rank - 1]
        shown = target.pair >= 0
        rho_t = np.where(shown, rho[np.maximum(target.pair, 0)], 0.0)
        w = np.where(rho_t > 0, np.minimum(t / np.where(rho_t > 0, rho_t, 1.0), self.clip), 0.0)
        mass = np.bincount(target.query, weights=t, minlength=n_q)
        reached = np.bincount(target.query, weights=w * rho_t, minlength=n_q)
        out: dict[str, dict[str, float]] = {}
        for o in self.outcomes:
            y = log.outcomes[o] * w_imp
            logging = y[log.position <= self.k].sum() / total
            y_pair = np.bincount(log.pair, weights=y * modelled, minlength=n_pair) / np.maximum(searches[pair_q], 1e-12)
            y_t = np.where(shown, y_pair[np.maximum(target.pair, 0)], 0.0)
            ips_q = np.bincount(target.query, weights=w * y_t, minlength=n_q)
            snips_q = np.where(reached > 0, ips_q * mass / np.where(reached > 0, reached, 1.0), 0.0)
            dm_q = np.bincount(target.query, weights=t * target.mu[o], minlength=n_q)
            dr_q = dm_q + np.bincount(target.query, weights=w * (y_t - target.mu[o] * rho_t), minlength=n_q)
            out[o] = {"logging": logging, **{name: float((v * searches).sum() / total) for name, v in
                                             (("ips", ips_q), ("snips", snips_q), ("dm", dm_q), ("dr", dr_q))}}
        return out

    def evaluate(self, ranking: pd.DataFrame) -> dict[str, Any]:
        """Estimates for `ranking` (query_id, product_id, score: every candidate of every logged query) and
        for the logging ranker, per search in the top k, each with its 95% interval and the difference."""
        if not hasattr(self, "log_"):
            raise CounterfactualError("OfflineEvaluator is not fitted. Fix: call fit(log, features) first.")
        target = self._target(ranking)
        point = self._values(target, None)
        rng = np.random.default_rng(self.seed)
        reps = [self._values(target, w) for w in bootstrap_weights(self.log_, self.n_boot, self.unit, rng)]
        t = self.propensity_.examination_[target.rank - 1]
        shown = target.pair >= 0
        return {"k": self.k, "clip": self.clip, "n_boot": self.n_boot, "bootstrap_unit": self.unit,
                "searches": self.log_.n_searches, "queries": len(self.log_.queries),
                "propensity": {"estimator": type(self.propensity_).__name__,
                               "examination": np.round(self.propensity_.examination_[: self.k], 5).tolist()},
                "support": round(float(t[shown].sum() / max(t.sum(), 1e-12)), 4),
                "outcomes": {o: _summary(point[o], [r[o] for r in reps]) for o in self.outcomes}}


    def compare(self, ranking: pd.DataFrame, baseline: pd.DataFrame) -> dict[str, Any]:
        """`ranking` against another ranking (e.g. the registered champion), both estimated from this log and
        paired on the same bootstrap resamples, so the interval is of the difference itself: per outcome and
        estimator, both values and the relative difference ranking / baseline - 1 with its 95% interval."""
        if not hasattr(self, "log_"):
            raise CounterfactualError("OfflineEvaluator is not fitted. Fix: call fit(log, features) first.")
        new, old = self._target(ranking), self._target(baseline)
        pn, pb = self._values(new, None), self._values(old, None)
        rng = np.random.default_rng(self.seed)
        reps = [(self._values(new, w), self._values(old, w))
                for w in bootstrap_weights(self.log_, self.n_boot, self.unit, rng)]
        out: dict[str, Any] = {}
        for o in self.outcomes:
            out[o] = {}
            for name in ESTIMATORS:
                ratio = np.array([a[o][name] / b[o][name] if b[o][name] > 0 else np.nan for a, b in reps])
                out[o][name] = {"value": pn[o][name], "baseline": pb[o][name],
                                "rel_diff": pn[o][name] / pb[o][name] - 1.0 if pb[o][name] > 0 else float("nan"),
                                "rel_diff_ci95": [float(v) for v in np.nanpercentile(ratio - 1.0, [2.5, 97.5])]}
        return {"k": self.k, "n_boot": self.n_boot, "bootstrap_unit": self.unit, "searches": self.log_.n_searches,
                "queries": len(self.log_.queries), "outcomes": out}


def _ci(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _summary(point: dict[str, float], reps: list[dict[str, float]]) -> dict[str, Any]:
    """Per estimator: value, its interval, and the difference to the logging ranker (absolute and relative)."""
    base = np.array([r["logging"] for r in reps])
    out: dict[str, Any] = {"logging": {"value": point["logging"], "ci95": _ci(base)}}
    for name in ESTIMATORS:
        v = np.array([r[name] for r in reps])
        out[name] = {"value": point[name], "ci95": _ci(v), "diff": point[name] - point["logging"],
                     "diff_ci95": _ci(v - base), "rel_diff": point[name] / point["logging"] - 1.0
                     if point["logging"] > 0 else float("nan"),
                     "rel_diff_ci95": _ci(v / np.where(base > 0, base, np.nan) - 1.0)}
    return out


__all__ = ["DirectModel", "ESTIMATORS", "OfflineEvaluator"]
