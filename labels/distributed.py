"""Labelling over Dask partitions: local tiers on the workers, the API tier and the cache on the driver.

`PartitionedBackend` is a `Backend` whose `grade` cuts the pairs into `dask.dataframe` partitions and
grades each on a worker with a local backend (the fitted grader, a cross-encoder tier: anything a
picklable `BackendSpec` builds), built once per worker process. Because it is an ordinary backend, the
single-process machinery does the rest unchanged: `grade_with_cache` and the cascade look every pair up
in the SQLite cache first, send only the missing pairs (identical content once), and commit each result
as its partition comes back.

Why the work is split this way:
- the cache never pays twice: only the driver reads and writes it, and it deduplicates by cache key
  *before* anything is sent, so no two workers ever meet the same pair; a partition that a dead worker
  leaves behind is re-run by the scheduler (local tiers cost compute, never dollars) and INSERT OR IGNORE
  keeps the first stored grade;
- the API tier stays one in-driver backend (`OpenAIBackend`): its one rate limiter and concurrency limit
  see every request of the job, however many workers graded the tiers below it. Calls to an API are I/O,
  so a driver with async concurrency is what fills a rate limit; workers would only split it;
- results are committed per finished partition (`as_completed`), so a killed driver re-run grades only
  the partitions that had not come back;
- a worker killed mid-job: the scheduler re-runs its partitions on a live worker (the partitions' pairs
  live in the task graph), so the job completes; a partition that kills every worker it lands on ends
  in `LabelerError` (as does any result count short of the pairs sent), never in missing labels.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .backends.base import Backend, LabelerError, LabelResult, OnResult, Pair

_BACKENDS: dict[BackendSpec, Backend] = {}
_BUILDS: list[tuple] = []
_LOCK = threading.Lock()


@dataclass(frozen=True)
class BackendSpec:
    """How a worker builds a local backend: `factory(**kwargs)` (e.g. `GraderBackend`, grader_dir=...)."""

    factory: Callable[..., Backend]
    kwargs: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of(cls, factory: Callable[..., Backend], **kwargs: Any) -> BackendSpec:
        return cls(factory, tuple(sorted(kwargs.items())))

    def build(self) -> Backend:
        """The backend, built at most once in this process (a worker keeps it for every partition)."""
        with _LOCK:
            if self not in _BACKENDS:
                _BACKENDS[self] = self.factory(**dict(self.kwargs))
                _BUILDS.append((os.getpid(), getattr(self.factory, "__name__", str(self.factory))))
            return _BACKENDS[self]


def backend_builds() -> list[tuple]:
    """(pid, factory) of every backend this process built: `client.run(backend_builds)` per worker."""
    return list(_BUILDS)


def _identity(spec: BackendSpec) -> tuple[str, str, str]:
    be = spec.build()
    return be.name, be.model, be.prompt_version


def grade_partition(part: pd.DataFrame, spec: BackendSpec) -> pd.DataFrame:
    """Grade one partition's pairs on a worker; rows keyed by the driver's pair index `i`."""
    be = spec.build()
    pairs: list[Pair] = list(part["pair"])
    got: dict[int, LabelResult] = {}
    be.grade(pairs, on_result=lambda p, r: got.__setitem__(id(p), r))
    rows = []
    for i, p in zip(part["i"], pairs):
        r = got.get(id(p))
        if r is not None:
            rows.append((int(i), *r.probs, r.hard_grade, r.tokens_in, r.tokens_out, r.cost, r.output_mode))
    return pd.DataFrame(rows, columns=["i", "p0", "p1", "p2", "p3", "hard_grade", "tokens_in", "tokens_out",
                                       "cost", "output_mode"])


class PartitionedBackend(Backend):
    """A local backend run over partitions on a Dask cluster; see the module docstring."""

    def __init__(self, spec: BackendSpec, client: Any, npartitions: int | None = None):
        self.spec, self.client, self.npartitions = spec, client, npartitions
        try:
            self.name, self.model, self.prompt_version = client.submit(_identity, spec, pure=False).result()
        except Exception as e:  # noqa: BLE001 - a worker-side failure comes back as its own type
            raise LabelerError(f"the workers cannot build the local labeler {spec.factory!r} "
                               f"({type(e).__name__}: {e}). Fix: make its files reachable from every worker "
                               "(a shared path or object store).") from e

    def _partitions(self, pairs: Sequence[Pair]):
        import dask
        import dask.dataframe as dd

        from ltr.data.engine import n_partitions
        df = pd.DataFrame({"i": range(len(pairs)), "pair": pd.Series(list(pairs), dtype=object)})
        n = self.npartitions or n_partitions(self.client)
        with dask.config.set({"dataframe.convert-string": False}):  # keep the Pair objects, not their str()
            return dd.from_pandas(df, npartitions=max(1, min(n, len(pairs))), sort=False).to_delayed()

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        from distributed import as_completed

        if not pairs:
            return []
        futures = self.client.compute([_graded(p, self.spec) for p in self._partitions(pairs)])
        out: list[LabelResult] = []
        try:
            for fut in as_completed(futures):
                for row in fut.result().itertuples(index=False):
                    p = pairs[row.i]
                    r = LabelResult(p.query_id, p.product_id, (row.p0, row.p1, row.p2, row.p3), self.name,
                                    self.model, self.prompt_version, int(row.tokens_in), int(row.tokens_out),
                                    float(row.cost), None if pd.isna(row.hard_grade) else int(row.hard_grade),
                                    output_mode=row.output_mode)
                    out.append(r)
                    if on_result:
                        on_result(p, r)
        except Exception as e:  # noqa: BLE001 - KilledWorker, CommClosedError, a worker's own exception
            for f in futures:
                f.cancel()
            raise LabelerError(f"distributed labelling stopped after {len(out)} of {len(pairs)} pairs "
                               f"({type(e).__name__}: {e}). Fix: re-run; the graded pairs are in the cache.") \
                from e
        if len(out) != len(pairs):  # a worker's backend skipped pairs: say so, never return a silent hole
            raise LabelerError(f"distributed labelling returned {len(out)} results for {len(pairs)} pairs "
                               f"(the local backend {self.name!r} on the workers graded fewer than it was sent). "
                               "Fix: re-run; the graded pairs are in the cache.")
        return out


def _graded(part, spec: BackendSpec):
    import dask

    return dask.delayed(grade_partition)(part, spec)


__all__ = ["BackendSpec", "PartitionedBackend", "backend_builds", "grade_partition"]
