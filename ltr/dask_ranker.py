"""XGBoost LambdaMART on a Dask cluster (`xgboost.dask.DaskXGBRanker`) behind the ranker contract.

`DaskXGBLambdaMART` is an `XGBLambdaMART`: same parameters, same `fit(X, y, qid)` / `predict(X)` /
`get_params()`, same grouped validation split, and after `fit` it holds a plain in-process
`xgboost.XGBRanker` with the booster the cluster built, so MLflow logging, serving and `predict` on a
pandas frame work exactly as for the single-process ranker. X may also be a `dask.dataframe` (then y and
qid are dask Series, or names of X's columns) for tables that do not fit one machine.

How query groups are laid out, and why:
- LambdaMART's gradient of a row depends on every other row of its query, so a group split over two
  workers loses the pairs that cross the cut (XGBoost's docs warn it costs accuracy). Every group is
  therefore kept whole on one partition, and partitions are sorted by qid.
- XGBoost's own guard (`allow_group_split=False`) does this by giving *every query its own partition*:
  100k queries would be 100k partitions, and the docs warn of the fragmentation. Instead the rows are
  indexed by a dense query code and cut into `npartitions` ranges *at group boundaries*
  (`partition_by_query`: `dd.from_pandas(sort=True)` for a pandas frame, `set_index` for a dask one;
  neither lets an index value straddle two partitions), then handed to XGBoost with
  `allow_group_split=True`, which only means "trust the partitioning". A partition lives on one worker,
  so each group is whole on one worker and the per-group gradients equal the single-process ones; only
  the quantile sketch is merged across workers, so the trees may differ in a split candidate
  (tests/test_dask_engine.py: NDCG@10 within 0.005 of `XGBLambdaMART` on the same data).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .data.engine import current_client, n_partitions
from .rankers import RankerError, XGBLambdaMART, _as_frame, _sorted_groups

QID, LABEL = "__qid", "__label"


def partition_by_query(X: pd.DataFrame, y, qid, npartitions: int):
    """A dask DataFrame of X's columns plus `__label` and `__qid` (a dense int query code, also the index),
    sorted by qid and cut into about `npartitions` partitions, never inside a query group."""
    import dask.dataframe as dd

    Xs, ys, codes = _sorted_groups(X, y, qid)
    df = Xs.assign(**{LABEL: ys, QID: codes.astype("int64")})
    df.index = pd.Index(codes.astype("int64"), name="qidx")
    n = max(1, min(int(npartitions), len(np.unique(codes))))
    return dd.from_pandas(df, npartitions=n, sort=True)


def partition_dask_by_query(ddf, label: str, qcol: str, npartitions: int):
    """`partition_by_query` for a dask DataFrame: qid becomes a dense code (one pass to learn the queries),
    then a shuffle by it; `set_index` sorts each partition and never splits an index value."""
    codes = ddf[qcol].astype("category").cat.as_known().cat.codes.astype("int64")
    out = ddf.assign(**{QID: codes, LABEL: ddf[label].astype("float64")}).drop(columns=[label, qcol])
    return out.set_index(QID, drop=False, npartitions=npartitions, sort=True)


def group_layout(ddf) -> pd.DataFrame:
    """Per partition: rows, first and last qid, whether it is sorted by qid (the check that no group is split
    is then: the partitions' qid ranges do not overlap)."""
    def one(part: pd.DataFrame) -> pd.DataFrame:
        q = part[QID].to_numpy()
        return pd.DataFrame({"rows": [len(q)], "first": [q.min() if len(q) else -1],
                             "last": [q.max() if len(q) else -1],
                             "sorted": [bool((np.diff(q) >= 0).all())], "qids": [sorted(set(q.tolist()))]})
    return ddf.map_partitions(one, meta={"rows": "i8", "first": "i8", "last": "i8", "sorted": "bool",
                                         "qids": object}).compute().reset_index(drop=True)


def _fit_or_explain(client, fit) -> None:
    """Run `fit`; if it fails because a worker was lost, say so in one `RankerError`.

    A lost worker cannot be recovered inside a fit: XGBoost's collective is a fixed group of workers, so
    the survivor's all-reduce fails on the closed socket and XGBoost refuses to re-run the dead worker's
    part elsewhere ("Resilience is not yet supported"). The fit therefore ends in an error (never in a
    model trained on part of the rows) and the fix is to re-run it; the nanny has already restarted the
    worker. Other failures (a bad parameter) are re-raised as they are."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    before = set(client.scheduler_info(n_workers=-1)["workers"])
    try:
        fit()
    except Exception as e:
        lost = sorted(before - set(client.scheduler_info(n_workers=-1)["workers"]))
        if not lost and not isinstance(e, (KilledWorker, CommClosedError)):
            raise
        raise RankerError(f"Dask training lost worker(s) {lost or '(unknown)'} mid-fit ({type(e).__name__}: "
                          f"{str(e)[:300]}); no model was produced. Fix: re-run the fit (the cluster restarts "
                          "dead workers); if workers keep dying, give them more memory (compute.memory_limit) "
                          "or use more workers.") from e


class DaskXGBLambdaMART(XGBLambdaMART):
    """`XGBLambdaMART` trained by `xgboost.dask.DaskXGBRanker`; see the module docstring.

    scheduler_address: the cluster to use (None: the process's current Dask client, as opened by
    `ltr.data.engine.dask_client`). npartitions: None = `partitions_per_worker` per worker. n_jobs: None =
    each worker's own thread count (passing 2 on 2 one-thread workers would oversubscribe the cores).
    """

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.1, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, max_bin: int = 256, ndcg_exp_gain: bool = False,
                 eval_at: int = 10, early_stopping_rounds: int | None = 30, validation_fraction: float = 0.2,
                 lambdarank_pair_method: str = "topk", lambdarank_num_pair_per_sample: int | None = None,
                 n_jobs: int | None = None, random_state: int = 0, tree_method: str = "hist",
                 scheduler_address: str | None = None, npartitions: int | None = None,
                 partitions_per_worker: int = 2, monotone: bool = False):
        super().__init__(n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_child_weight=min_child_weight, subsample=subsample,
                         colsample_bytree=colsample_bytree, reg_lambda=reg_lambda, max_bin=max_bin,
                         ndcg_exp_gain=ndcg_exp_gain, eval_at=eval_at,
                         early_stopping_rounds=early_stopping_rounds, validation_fraction=validation_fraction,
                         lambdarank_pair_method=lambdarank_pair_method,
                         lambdarank_num_pair_per_sample=lambdarank_num_pair_per_sample, n_jobs=n_jobs,
                         random_state=random_state, tree_method=tree_method, monotone=monotone)
        self.scheduler_address = scheduler_address
        self.npartitions = npartitions
        self.partitions_per_worker = partitions_per_worker

    def _xgb_params(self, with_es: bool, feature_names: Sequence[str] = ()) -> dict:
        p = super()._xgb_params(with_es, feature_names)
        if self.n_jobs is None:
            p.pop("n_jobs")
        return p

    def _parts(self, client) -> int:
        return self.npartitions or n_partitions(client, self.partitions_per_worker)

    def _distribute(self, X, y, qid, eval_set, feature_names, client):
        """(train, eval or None) as query-partitioned dask frames, and the feature names."""
        import dask.dataframe as dd

        if isinstance(X, dd.DataFrame):
            if not (isinstance(y, str) and isinstance(qid, str)):
                raise RankerError("with a dask DataFrame X, pass y and qid as the names of its label and query "
                                  "columns. Fix: fit(ddf, 'label', 'query_id').")
            if eval_set is not None:
                raise RankerError("eval_set is not supported with a dask DataFrame X (no early stopping there). "
                                  "Fix: set early_stopping_rounds=None, or fit from pandas frames.")
            feats = list(feature_names or [c for c in X.columns if c not in (y, qid)])
            train = partition_dask_by_query(X[[*feats, y, qid]], y, qid, self._parts(client))
            return train, None, feats
        Xs, ys, qs, ev = self._prepare(X, y, qid, eval_set, feature_names)
        n = self._parts(client)
        train = partition_by_query(Xs, ys, qs, n)
        val = partition_by_query(ev[0], ev[1], ev[2], n) if ev is not None else None
        return train, val, list(Xs.columns)

    def fit(self, X, y, qid, eval_set=None, feature_names: Sequence[str] | None = None,
            verbose: bool = False) -> DaskXGBLambdaMART:
        import xgboost as xgb
        from xgboost import dask as dxgb

        client = current_client(self.scheduler_address)
        train, val, feats = self._distribute(X, y, qid, eval_set, feature_names, client)
        train = train.persist()
        if self.ndcg_exp_gain:
            lab = train[LABEL]
            if bool(((lab != lab.round()) | (lab > 31) | (lab < 0)).any().compute()):
                raise RankerError("ndcg_exp_gain=True needs integer labels 0..31. Fix: set ndcg_exp_gain=False "
                                  "for continuous labels, or bucket them (target.label_mode='bucket').")
        with_es = val is not None and bool(self.early_stopping_rounds)
        model = dxgb.DaskXGBRanker(**self._xgb_params(with_es, feats), allow_group_split=True)
        model.client = client
        kw = {}
        if val is not None:
            kw = {"eval_set": [(val[feats], val[LABEL])], "eval_qid": [val[QID]]}
        _fit_or_explain(client, lambda: model.fit(train[feats], train[LABEL], qid=train[QID], verbose=verbose, **kw))
        self.layout_ = group_layout(train)
        local = xgb.XGBRanker()
        local.load_model(bytearray(model.get_booster().save_raw("ubj")))
        self.model_, self.feature_names_ = local, feats
        self.best_iteration_ = int(getattr(local, "best_iteration", self.n_estimators - 1)
                                   if with_es else self.n_estimators - 1)
        return self

    def predict(self, X, missing: str = "error"):
        """In-process scores for a pandas frame or array (as `XGBLambdaMART`); for a dask DataFrame a dask
        Series of scores computed on the cluster, partition by partition."""
        import dask.dataframe as dd

        if not isinstance(X, dd.DataFrame):
            return super().predict(X, missing=missing)
        from xgboost import dask as dxgb

        if not hasattr(self, "feature_names_"):
            raise RankerError("ranker is not fitted. Fix: call fit() or load a model first.")
        if missing == "nan":  # absent features as NaN, as in training (the trees' default directions)
            X = X.assign(**{f: np.nan for f in self.feature_names_ if f not in X.columns})
        cols = X[self.feature_names_]
        _as_frame(cols._meta, self.feature_names_)  # the dtype check on the empty meta frame
        return dxgb.inplace_predict(current_client(self.scheduler_address), self.model_.get_booster(),
                                    cols.astype("float32"))


__all__ = ["DaskXGBLambdaMART", "group_layout", "partition_by_query", "partition_dask_by_query"]
