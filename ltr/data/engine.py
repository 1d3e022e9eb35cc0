"""Where the heavy stages run: this process (`engine: local`) or a Dask cluster (`engine: dask`).

One config section, `ComputeConfig`, and one way to get a client for it, `dask_client`: a scheduler
address (a real cluster: dask-kubernetes, Coiled, YARN, SSH all end in a `tcp://host:8786` address or a
scheduler file), else a `LocalCluster` of worker *processes* on this machine. Processes, not threads:
the encoders and the tree booster hold the GIL in parts and a worker killed by the OS must not take the
job with it (the nanny restarts it and the scheduler re-runs its tasks).

Lives on the lowest floor so that labels/, features/ and ltr/ all open the cluster the same way;
`distributed` is imported only when a client is asked for, so `engine: local` never pays for it.
"""
from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from .config import StrictConfig


class EngineError(ValueError):
    """The Dask cluster cannot be reached or used; the message names the config key and the fix (a
    ValueError, so the CLI prints it as one line, like any other bad config value)."""


class ComputeConfig(StrictConfig):
    """`compute:` in a run config. `engine: local` (default) runs every stage in this process."""

    engine: Literal["local", "dask"] = "local"
    scheduler_address: Optional[str] = Field(None, description="e.g. tcp://scheduler:8786 of a running Dask "
                                             "cluster; None: start a LocalCluster of n_workers processes")
    scheduler_file: Optional[Path] = Field(None, description="a scheduler JSON file (dask-yarn, dask-mpi, "
                                           "SSH clusters write one); alternative to scheduler_address")
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes (only without an address)")
    threads_per_worker: int = Field(1, ge=1, description="LocalCluster threads per worker process")
    memory_limit: str = Field("auto", description="LocalCluster memory per worker, e.g. '4GiB'; 'auto' "
                              "splits the machine's memory between the workers")
    connect_timeout_s: float = Field(30.0, gt=0, description="seconds to wait for the scheduler")

    @model_validator(mode="after")
    def _one_address(self) -> ComputeConfig:
        if self.scheduler_address and self.scheduler_file:
            raise ValueError("compute.scheduler_address and compute.scheduler_file are both set. Fix: give one.")
        return self


@contextlib.contextmanager
def dask_client(cfg: ComputeConfig | None = None) -> Iterator[Any]:
    """A `distributed.Client` for `cfg`, closed on exit (with its LocalCluster when this call started one).
    Without an address, a client already open in this process (e.g. `coiled.Cluster(...).get_client()`,
    whose TLS credentials a plain address would not carry) is used as it is.

    An unreachable scheduler is an `EngineError` naming the key, not a 30-line asyncio traceback."""
    cfg = cfg or ComputeConfig(engine="dask")
    from distributed import Client, LocalCluster, default_client

    if not (cfg.scheduler_address or cfg.scheduler_file):
        try:  # a client the caller opened (Coiled, dask-kubernetes, a notebook): use it, leave it open
            opened = default_client()
        except ValueError:
            opened = None
        if opened is not None:
            yield opened
            return
    cluster = None
    try:
        if cfg.scheduler_address or cfg.scheduler_file:
            client = Client(cfg.scheduler_address, scheduler_file=str(cfg.scheduler_file) if cfg.scheduler_file
                            else None, timeout=cfg.connect_timeout_s)
        else:
            cluster = LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                                   processes=True, memory_limit=cfg.memory_limit, dashboard_address=None)
            client = Client(cluster)
    except (OSError, TimeoutError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        where = cfg.scheduler_address or cfg.scheduler_file
        raise EngineError(f"cannot reach the Dask scheduler {where} ({type(e).__name__}: {e}). Fix: check "
                          "compute.scheduler_address / compute.scheduler_file, or remove them for a "
                          "LocalCluster.") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def current_client(scheduler_address: str | None = None) -> Any:
    """The client a stage should use: the process's current Dask client when it talks to
    `scheduler_address` (or when no address is asked for), else one connected to that address and kept
    for the life of the process (so an Optuna study does not reconnect for every trial)."""
    from distributed import Client, default_client

    try:
        c = default_client()
        if scheduler_address is None or c.scheduler.address == scheduler_address:
            return c
    except ValueError:  # no current client
        if scheduler_address is None:
            raise EngineError("no Dask client is open. Fix: run inside `with ltr.data.engine.dask_client(cfg)`, "
                              "or give a scheduler address (compute.scheduler_address).") from None
    with _SHARED_LOCK:
        c = _SHARED.get(scheduler_address)
        if c is None or c.status not in ("running", "connecting"):
            try:
                c = Client(scheduler_address, timeout=30, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise EngineError(f"cannot reach the Dask scheduler {scheduler_address} ({e}). Fix: check "
                                  "compute.scheduler_address.") from None
            _SHARED[scheduler_address] = c
    return c


@atexit.register
def _close_shared() -> None:
    for c in _SHARED.values():
        with contextlib.suppress(Exception):
            c.close()
    _SHARED.clear()


def n_partitions(client: Any, per_worker: int = 2, floor: int = 1) -> int:
    """Partitions for a table on this cluster: `per_worker` per live worker (at least `floor`). Two: one
    being worked on and one queued per worker, and half a worker's share to re-run after a lost worker."""
    return max(floor, per_worker * max(1, len(client.nthreads())))


__all__ = ["ComputeConfig", "EngineError", "current_client", "dask_client", "n_partitions"]
