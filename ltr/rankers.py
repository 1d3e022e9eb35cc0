"""LambdaMART rankers behind one scikit-learn-style contract: `fit(X, y, qid, eval_set=...)`, `predict(X)`,
`get_params()`; every fitted ranker knows its feature list (`feature_names_`).

- `XGBLambdaMART`: XGBoost `rank:ndcg`, hist trees; rows are sorted by query inside `fit` (XGBoost
  requires contiguous, sorted query groups) and early stopping watches NDCG@k on a validation split
  grouped by query (whole queries go to one side, so validation never sees a half of a training query).
- `LGBMLambdaMART`: LightGBM `lambdarank`, the baseline on the same features. LightGBM only takes
  integer relevance labels, so continuous labels are bucketed to 0..31 with a *linear* label gain.

Scale-out: `ltr.dask_ranker.DaskXGBLambdaMART` (model kind `xgboost_dask`) is the same ranker trained by
`xgboost.dask.DaskXGBRanker` with each query group whole on one partition.

`monotone=True` constrains the score to move with every feature whose direction the Feast repo declares
(`features.names.MONOTONE`: more similarity or coverage never ranks a product lower): trees on noisy
graded labels can otherwise learn wiggles in `bienc_cos` that break its order. On Home Depot's judged
queries it is within noise of free trees (docs/homedepot.md); it is a guard, not a source of gain.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features.names import MONOTONE

from .data.splits import SplitError, grouped_split
from .targets import bucketize

#: threads for TreeSHAP contributions (`predict_contributions`): two, or one on a one-core machine
EXPLAIN_THREADS = min(2, os.cpu_count() or 1)


class RankerError(SplitError):
    """Bad input to a ranker; the message names the field and the fix."""


# --- grouped splits --------------------------------------------------------------------------------

def split_frame(frame: pd.DataFrame, qcol: str, fractions: Sequence[float], seed: int = 0) -> list[pd.DataFrame]:
    """`grouped_split` applied to a frame; each part keeps its original row order."""
    if qcol not in frame.columns:
        raise RankerError(f"frame has no '{qcol}' column. Fix: set columns.query_id.")
    return [frame.loc[m].reset_index(drop=True) for m in grouped_split(frame[qcol].to_numpy(), fractions, seed)]


# --- helpers ---------------------------------------------------------------------------------------

def monotone_constraints(feature_names: Sequence[str]) -> tuple[int, ...]:
    """Per feature, in order: +1 / -1 where features.names.MONOTONE declares a direction, else 0."""
    return tuple(MONOTONE.get(f, 0) for f in feature_names)


def _as_frame(X, feature_names: Sequence[str] | None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        if feature_names is not None:
            missing = [f for f in feature_names if f not in X.columns]
            if missing:
                raise RankerError(f"X lacks feature column(s) {missing}. Fix: compute them or drop them "
                                  "from the feature list.")
            X = X[list(feature_names)]
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])]
        if bad:
            raise RankerError(f"feature column(s) {bad} are not numeric. Fix: encode them as floats.")
        return X.astype("float32")
    arr = np.asarray(X, dtype="float32")
    if arr.ndim != 2:
        raise RankerError(f"X must be 2-D, got shape {arr.shape}.")
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise RankerError(f"{len(names)} feature names for {arr.shape[1]} columns.")
    return pd.DataFrame(arr, columns=names)


def _sorted_groups(X: pd.DataFrame, y, qid) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    q = np.asarray(qid)
    if len(q) != len(X):
        raise RankerError(f"qid has {len(q)} rows, X has {len(X)}. Fix: pass one query id per row.")
    y = np.asarray(y, dtype="float64")
    if len(y) != len(X):
        raise RankerError(f"y has {len(y)} rows, X has {len(X)}. Fix: one label per row.")
    if np.isnan(y).any():
        raise RankerError(f"y has {int(np.isnan(y).sum())} NaN label(s). Fix: drop unlabelled rows.")
    codes = pd.factorize(pd.Series(q), sort=True)[0]
    order = np.argsort(codes, kind="stable")
    return X.iloc[order].reset_index(drop=True), y[order], codes[order]


def _group_sizes(sorted_codes: np.ndarray) -> np.ndarray:
    return np.diff(np.r_[np.flatnonzero(np.r_[True, np.diff(sorted_codes) != 0]), len(sorted_codes)])


class _RankerBase(BaseEstimator):
    """Shared fit plumbing: feature names, qid sorting, the grouped validation split."""

    def _prepare(self, X, y, qid, eval_set, feature_names):
        Xf = _as_frame(X, feature_names)
        if eval_set is None and self.early_stopping_rounds and self.validation_fraction > 0:
            qs = pd.unique(pd.Series(np.asarray(qid)))
            if len(qs) >= 4:
                tr, va = grouped_split(qid, [1 - self.validation_fraction, self.validation_fraction],
                                       self.random_state)
                y = np.asarray(y)
                q = np.asarray(qid)
                eval_set = (Xf.loc[va].reset_index(drop=True), y[va], q[va])
                Xf, y, qid = Xf.loc[tr].reset_index(drop=True), y[tr], q[tr]
        Xs, ys, qs_ = _sorted_groups(Xf, y, qid)
        ev = None
        if eval_set is not None:
            if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 3):
                raise RankerError("eval_set must be (X_val, y_val, qid_val). Fix: pass the validation queries' "
                                  "features, labels and query ids.")
            Xv = _as_frame(eval_set[0], list(Xs.columns))
            ev = _sorted_groups(Xv, eval_set[1], eval_set[2])
        self.feature_names_ = list(Xs.columns)
        return Xs, ys, qs_, ev

    def predict(self, X, missing: str = "error") -> np.ndarray:
        """Scores (higher = better). A DataFrame is matched to `feature_names_` by name; missing="nan" fills
        absent feature columns with NaN (handled by the trees' default directions, as in training)."""
        if not hasattr(self, "feature_names_"):
            raise RankerError("ranker is not fitted. Fix: call fit() or load a model first.")
        if isinstance(X, pd.DataFrame) and missing == "nan":
            X = X.reindex(columns=self.feature_names_)
        Xf = _as_frame(X, self.feature_names_ if isinstance(X, pd.DataFrame) else None)
        if not isinstance(X, pd.DataFrame):
            if Xf.shape[1] != len(self.feature_names_):
                raise RankerError(f"X has {Xf.shape[1]} columns, the model expects {len(self.feature_names_)}.")
            Xf.columns = self.feature_names_
        return self._predict(Xf)

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Scores of a float matrix whose columns are already `feature_names_` (NaN = missing), in one
        thread: the serving path, where a pandas frame per 100-row request costs more than the trees."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names_):
            raise RankerError(f"X has shape {X.shape}; the model expects (n, {len(self.feature_names_)}).")
        return np.asarray(self._predict_matrix(X), dtype="float64")

    def predict_contributions(self, X: np.ndarray) -> np.ndarray:
        """Each feature's exact share of each row's score (TreeSHAP), the bias last: shape (n, features + 1),
        rows summing to `predict_matrix(X)`. Why here: the ranker is what knows how its trees score."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names_):
            raise RankerError(f"X has shape {X.shape}; the model expects (n, {len(self.feature_names_)}).")
        return np.asarray(self._contributions(X), dtype="float64")


class XGBLambdaMART(_RankerBase):
    """XGBoost LambdaMART (`rank:ndcg`). See module docstring."""

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.1, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, max_bin: int = 256, ndcg_exp_gain: bool = False,
                 eval_at: int = 10, early_stopping_rounds: int | None = 30, validation_fraction: float = 0.2,
                 lambdarank_pair_method: str = "topk", lambdarank_num_pair_per_sample: int | None = None,
                 n_jobs: int = 2, random_state: int = 0, tree_method: str = "hist", monotone: bool = False):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.ndcg_exp_gain = ndcg_exp_gain
        self.eval_at = eval_at
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.lambdarank_pair_method = lambdarank_pair_method
        self.lambdarank_num_pair_per_sample = lambdarank_num_pair_per_sample
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.tree_method = tree_method
        self.monotone = monotone

    def _xgb_params(self, with_es: bool, feature_names: Sequence[str] = ()) -> dict:
        p = {"objective": "rank:ndcg", "n_estimators": self.n_estimators, "learning_rate": self.learning_rate,
                 "max_depth": self.max_depth, "min_child_weight": self.min_child_weight, "subsample": self.subsample,
                 "colsample_bytree": self.colsample_bytree, "reg_lambda": self.reg_lambda, "max_bin": self.max_bin,
                 "ndcg_exp_gain": self.ndcg_exp_gain, "lambdarank_pair_method": self.lambdarank_pair_method,
                 "tree_method": self.tree_method, "n_jobs": self.n_jobs, "random_state": self.random_state,
                 "eval_metric": f"ndcg@{self.eval_at}"}
        # topk truncation = the NDCG cut-off we evaluate: optimizes NDCG@eval_at and is ~2x cheaper than
        # XGBoost's default truncation (measured: 1.8 s vs 3.1 s CPU for 30 trees on 100k rows)
        npair = self.lambdarank_num_pair_per_sample
        if npair is None and self.lambdarank_pair_method == "topk":
            npair = self.eval_at
        if npair is not None:
            p["lambdarank_num_pair_per_sample"] = npair
        if with_es:
            p["early_stopping_rounds"] = self.early_stopping_rounds
        directions = monotone_constraints(feature_names) if self.monotone else ()
        if any(directions):
            p["monotone_constraints"] = "(" + ",".join(map(str, directions)) + ")"
        return p

    def fit(self, X, y, qid, eval_set=None, feature_names: Sequence[str] | None = None,
            verbose: bool = False) -> XGBLambdaMART:
        import xgboost as xgb

        Xs, ys, qs, ev = self._prepare(X, y, qid, eval_set, feature_names)
        if self.ndcg_exp_gain and (ys != np.round(ys)).any() | (ys > 31).any() | (ys < 0).any():
            raise RankerError("ndcg_exp_gain=True needs integer labels 0..31. Fix: set ndcg_exp_gain=False for "
                              "continuous labels, or bucket them (target.label_mode='bucket').")
        with_es = ev is not None and bool(self.early_stopping_rounds)
        model = xgb.XGBRanker(**self._xgb_params(with_es, list(Xs.columns)))
        kw = {}
        if ev is not None:
            kw = {"eval_set": [(ev[0], ev[1])], "eval_qid": [ev[2]]}
        model.fit(Xs, ys, qid=qs, verbose=verbose, **kw)
        self.model_ = model
        self.best_iteration_ = int(getattr(model, "best_iteration", self.n_estimators - 1)
                                   if with_es else self.n_estimators - 1)
        return self

    def _predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model_.predict(X), dtype="float64")

    def _serving(self):
        """The booster set for one thread, and the iteration range XGBRanker.predict would use."""
        booster = self.model_.get_booster()
        if getattr(self, "_serving_booster", None) is not booster:  # worked out once per booster
            booster.set_param({"nthread": 1})  # one thread: 100 rows do not split well
            best = getattr(self.model_, "best_iteration", None)  # as XGBRanker.predict; raises inside when absent
            self._serving_range = (0, best + 1) if best is not None else (0, 0)
            self._serving_booster = booster
        return booster, self._serving_range

    def _predict_matrix(self, X: np.ndarray) -> np.ndarray:
        booster, iterations = self._serving()
        return booster.inplace_predict(X, iteration_range=iterations, validate_features=False)

    def _contributions(self, X: np.ndarray) -> np.ndarray:
        """TreeSHAP on a copy of the booster with two threads: it costs ~0.2-0.4 ms a row on one core (ten
        times a prediction), and an explained request is a person looking at a page, not the hot path."""
        import xgboost as xgb

        booster, iterations = self._serving()
        if getattr(self, "_explain_of", None) is not booster:
            self._explain_booster = booster.copy()
            self._explain_booster.set_param({"nthread": EXPLAIN_THREADS})
            self._explain_of = booster
        return self._explain_booster.predict(xgb.DMatrix(X, missing=np.nan, nthread=EXPLAIN_THREADS),
                                             pred_contribs=True, iteration_range=iterations,
                                             validate_features=False)

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        score = self.model_.get_booster().get_score(importance_type=importance_type)
        return {f: float(score.get(f, 0.0)) for f in self.feature_names_}

    @classmethod
    def from_fitted(cls, model, feature_names: Sequence[str] | None = None) -> XGBLambdaMART:
        """Wrap an already fitted xgboost.XGBRanker (e.g. loaded from MLflow)."""
        self = cls()
        self.model_ = model
        names = feature_names or model.get_booster().feature_names
        if not names:
            raise RankerError("the loaded model has no feature names. Fix: pass feature_names.")
        self.feature_names_ = list(names)
        self.best_iteration_ = int(getattr(model, "best_iteration", -1) or -1)
        return self


class LGBMLambdaMART(_RankerBase):
    """LightGBM lambdarank baseline; continuous labels are bucketed to 0..n_buckets-1 with linear gain."""

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.1, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, max_bin: int = 255, eval_at: int = 10,
                 early_stopping_rounds: int | None = 30, validation_fraction: float = 0.2, n_buckets: int = 32,
                 n_jobs: int = 2, random_state: int = 0, monotone: bool = False):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.eval_at = eval_at
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.n_buckets = n_buckets
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.monotone = monotone

    def _int_labels(self, y: np.ndarray) -> np.ndarray:
        if (y == np.round(y)).all() and y.min() >= 0 and y.max() < self.n_buckets:
            return y.astype(int)
        if y.min() < 0 or y.max() > 1:
            raise RankerError("LightGBM needs integer labels or continuous labels in [0,1]. Fix: use "
                              "ltr.targets.make_labels.")
        return bucketize(y, self.n_buckets)

    def fit(self, X, y, qid, eval_set=None, feature_names: Sequence[str] | None = None,
            verbose: bool = False) -> LGBMLambdaMART:
        import lightgbm as lgb

        Xs, ys, qs, ev = self._prepare(X, y, qid, eval_set, feature_names)
        model = lgb.LGBMRanker(
            objective="lambdarank", n_estimators=self.n_estimators, learning_rate=self.learning_rate,
            max_depth=self.max_depth, num_leaves=min(2 ** self.max_depth - 1, 255),
            min_child_weight=self.min_child_weight, subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0, colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda, max_bin=self.max_bin, n_jobs=self.n_jobs, random_state=self.random_state,
            label_gain=list(range(self.n_buckets)), deterministic=True, force_row_wise=True, verbose=-1,
            **({"monotone_constraints": list(monotone_constraints(Xs.columns))} if self.monotone else {}))
        kw: dict = {}
        if ev is not None:
            kw = {"eval_X": (ev[0],), "eval_y": (self._int_labels(ev[1]),), "eval_group": [_group_sizes(ev[2])],
                      "eval_at": [self.eval_at]}
            if self.early_stopping_rounds:
                kw["callbacks"] = [lgb.early_stopping(self.early_stopping_rounds, verbose=verbose)]
        model.fit(Xs, self._int_labels(ys), group=_group_sizes(qs), **kw)
        self.model_ = model
        self.best_iteration_ = int(model.best_iteration_ or self.n_estimators)
        return self

    def _predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model_.predict(X), dtype="float64")

    def _predict_matrix(self, X: np.ndarray) -> np.ndarray:
        return self._booster().predict(X, num_threads=1)  # best iteration by default, as LGBMRanker.predict

    def _contributions(self, X: np.ndarray) -> np.ndarray:
        return self._booster().predict(X, num_threads=EXPLAIN_THREADS, pred_contrib=True)

    def _booster(self):
        return getattr(self.model_, "booster_", self.model_)  # LGBMRanker or a bare (MLflow-loaded) Booster

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        vals = self._booster().feature_importance(importance_type=importance_type)
        return {f: float(v) for f, v in zip(self.feature_names_, vals)}

    @classmethod
    def from_fitted(cls, model, feature_names: Sequence[str] | None = None) -> LGBMLambdaMART:
        """Wrap a fitted lightgbm.LGBMRanker or lightgbm.Booster (what MLflow loads back)."""
        self = cls()
        self.model_ = model
        self.feature_names_ = list(feature_names or self._booster().feature_name())
        self.best_iteration_ = int(getattr(model, "best_iteration_", None)
                                   or getattr(model, "best_iteration", -1) or -1)
        return self


RANKERS = {"xgboost": XGBLambdaMART, "lightgbm": LGBMLambdaMART}


def make_ranker(kind: str = "xgboost", **params) -> _RankerBase:
    """Build a ranker by name ('xgboost' | 'lightgbm') with constructor parameters (the Dask one is
    `ltr.dask_ranker.DaskXGBLambdaMART`, which imports this module)."""
    if kind not in RANKERS:
        raise RankerError(f"ranker kind {kind!r} unknown. Fix: use one of {sorted(RANKERS)}.")
    return RANKERS[kind](**params)


__all__ = ["LGBMLambdaMART", "RankerError", "XGBLambdaMART", "grouped_split", "make_ranker", "split_frame"]
