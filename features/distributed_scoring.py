"""Batch scoring over `dask.dataframe` partitions: bi-encoder cosine and cross-encoder score on a cluster.

Each partition of (query_id, product_id) rows is scored on a worker by the same functions as in one
process (`features.biencoder.score_pairs`, `features.crossencoder.score_pairs`), so the values are the
single-process ones up to float rounding of a different batch layout (tests: within 1e-5).

Why it looks like this:
- the model is loaded once per worker process, not once per partition: `_model` keeps it in a
  process-wide dict (a cached loader per process; a worker restarted after a crash loads it again), and
  its torch threads are set to the worker's own thread count, so two one-thread workers on two cores do
  not oversubscribe them;
- the catalog and the queries travel once per worker (`client.scatter(..., broadcast=True)`), not once
  per partition, and each partition carries only ids;
- a lost worker's partitions are re-run by the scheduler (the nanny restarts the process); whatever
  happens, the result is checked row for row against the input before it is returned, so a job ends
  complete or with `ScoringError`, never with silently missing rows.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ltr.data.engine import current_client, n_partitions

Kind = Literal["bienc", "ce"]
COLUMN = {"bienc": "bienc_cos", "ce": "ce_score"}

_MODELS: dict[tuple, Any] = {}
_LOADS: list[tuple] = []
_LOCK = threading.Lock()


class ScoringError(RuntimeError):
    """A distributed scoring job did not return every input row; the message says how many and the fix."""


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker
        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):
        return None


def _model(kind: Kind, path: str | None, max_length: int | None) -> Any:
    """The scorer for (kind, path), loaded at most once in this process."""
    key = (kind, path, max_length)
    with _LOCK:
        if key not in _MODELS:
            import torch
            threads = _worker_threads()
            if threads:
                torch.set_num_threads(threads)
            if kind == "bienc":
                from .biencoder import FEATURE_MAX_LENGTH, BiEncoder, default_biencoder
                _MODELS[key] = default_biencoder() if path is None and max_length is None else \
                    BiEncoder(path, max_length=max_length or FEATURE_MAX_LENGTH)
            else:
                from .crossencoder import CrossEncoderScorer
                _MODELS[key] = CrossEncoderScorer(path, max_length=max_length)
            _LOADS.append((os.getpid(), *key))
        return _MODELS[key]


def model_loads() -> list[tuple]:
    """(pid, kind, path, max_length) of every model this process loaded: `client.run(model_loads)` shows
    that each worker loaded each model once."""
    return list(_LOADS)


def score_partition(part: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, kind: Kind,
                    path: str | None, max_length: int | None, batch_size: int) -> pd.DataFrame:
    """One partition through the single-process scoring function of `kind` (run on a worker)."""
    if part.empty:
        return pd.DataFrame({"query_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                             COLUMN[kind]: pd.Series(dtype="float64")})
    model = _model(kind, path, max_length)
    if kind == "bienc":
        from .biencoder import score_pairs
        return score_pairs(part, products, queries, encoder=model, batch_size=batch_size)
    from .crossencoder import score_pairs as ce_score_pairs
    return ce_score_pairs(part, products, queries, model, batch_size=batch_size)


def score_dask(pairs, products: pd.DataFrame, queries: pd.DataFrame, kind: Kind, path: str | Path | None = None,
               client: Any = None, npartitions: int | None = None, max_length: int | None = None,
               batch_size: int = 64):
    """A lazy dask DataFrame [query_id, product_id, <bienc_cos | ce_score>], one output partition per input
    partition (`pairs`: a dask DataFrame, or a pandas one cut into `npartitions`). Write it with
    `.to_parquet(dir)` when it does not fit in memory; `score_distributed` computes and checks it."""
    import dask.dataframe as dd

    if kind not in COLUMN:
        raise ValueError(f"kind={kind!r} unknown. Fix: use 'bienc' or 'ce'.")
    if kind == "ce" and path is None:
        raise ValueError("cross-encoder scoring needs the model directory. Fix: pass path=<cross-encoder dir>.")
    client = client or current_client()
    if not isinstance(pairs, dd.DataFrame):
        pairs = dd.from_pandas(pairs[["query_id", "product_id"]].reset_index(drop=True),
                               npartitions=npartitions or n_partitions(client), sort=False)
    prods = client.scatter(products, broadcast=True, hash=False)
    qs = client.scatter(queries, broadcast=True, hash=False)
    meta = pd.DataFrame({"query_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                         COLUMN[kind]: pd.Series(dtype="float64")})
    return pairs[["query_id", "product_id"]].map_partitions(
        score_partition, prods, qs, kind, None if path is None else str(path), max_length, batch_size,
        meta=meta, align_dataframes=False)


def score_distributed(pairs: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, kind: Kind,
                      path: str | Path | None = None, client: Any = None, npartitions: int | None = None,
                      max_length: int | None = None, batch_size: int = 64) -> pd.DataFrame:
    """`score_dask` computed: the feature table of `pairs`, in their order, every row present.

    A worker that dies can take a finished result with it and the scheduler may then cancel the gather
    (`FutureCancelledError`, "already forgotten") instead of recomputing it; scoring is pure, so the graph
    is run once more before the failure is reported."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    lost = (KilledWorker, CommClosedError, FutureCancelledError)
    for attempt in (1, 2):
        lazy = score_dask(pairs, products, queries, kind, path, client, npartitions, max_length, batch_size)
        try:
            out = lazy.compute().reset_index(drop=True)
            break
        except lost as e:  # a partition killed every worker it ran on, or a lost result was not recomputed
            if attempt == 2:
                raise ScoringError(f"distributed {kind} scoring of {len(pairs)} pairs failed: workers died "
                                   f"({type(e).__name__}: {str(e)[:300]}). Fix: give the workers more memory "
                                   "(compute.memory_limit) or use more, smaller partitions (npartitions), then "
                                   "re-run.") from e
    check_complete(pairs, out)
    return out


def check_complete(pairs: pd.DataFrame, out: pd.DataFrame) -> None:
    """Raise `ScoringError` unless `out` has exactly `pairs`' (query_id, product_id) rows, in order."""
    same = len(out) == len(pairs) and \
        np.array_equal(out["query_id"].to_numpy(), pairs["query_id"].astype(str).to_numpy()) and \
        np.array_equal(out["product_id"].to_numpy(), pairs["product_id"].astype(str).to_numpy())
    if not same:
        raise ScoringError(f"distributed scoring returned {len(out)} rows for {len(pairs)} pairs (or out of order). "
                           "Fix: re-run; if workers keep dying, give them more memory (compute.memory_limit).")


__all__ = ["ScoringError", "check_complete", "model_loads", "score_dask", "score_distributed",
           "score_partition"]
