"""Kill a real Dask worker process in the middle of a named task (test helper, imported by the workers).

`kill_mid_task(client, "score_partition", flag)` registers a worker plugin that, on whichever worker
first starts a task of that name (dask's `key_split` of its key, e.g. "score_partition" for
"('score_partition-3f2a...', 0)"), ends that worker process with `os._exit` `delay_s`
into the task: what the kernel's OOM killer or a lost machine leaves behind. Once per flag file, across
all workers (the nanny's restarted worker re-registers the plugin and must not die again). Before it
exits, the worker writes to the flag whether the task was still running ("mid-task") or had finished
("late"), so a test can assert that the kill landed in the middle of the work, not after it.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dask.utils import key_split
from distributed import WorkerPlugin


class KillOnce(WorkerPlugin):
    name = "kill-once"

    def __init__(self, task_name: str, flag: str, delay_s: float):
        self.task_name, self.flag, self.delay_s = task_name, flag, delay_s
        self.worker: Any = None

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or not key_split(key).startswith(self.task_name):
            return
        try:  # the first worker to get here claims the kill
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        threading.Timer(self.delay_s, self._die, (key,)).start()

    def _die(self, key) -> None:
        running = any(ts.key == key for ts in list(self.worker.state.executing))
        Path(self.flag).write_text("mid-task" if running else "late")
        os._exit(1)


@contextlib.contextmanager
def kill_mid_task(client, task_name: str, flag: Path, delay_s: float = 0.05, n_workers: int = 2) -> Iterator[Path]:
    """While inside: the first task named `task_name` kills its worker. On exit: the plugin is removed and
    the cluster is back to `n_workers` (the nanny restarts the dead one; 0: not waited for, for a cluster
    that is closed next)."""
    client.register_plugin(KillOnce(task_name, str(flag), delay_s), name=KillOnce.name)
    try:
        yield flag
    finally:
        client.unregister_worker_plugin(KillOnce.name)
        if n_workers:
            client.wait_for_workers(n_workers, timeout=120)


def train_with_a_killed_worker(flag: Path) -> dict:
    """A `DaskXGBLambdaMART` fit on a fresh LocalCluster (2 worker processes) whose first worker to start
    training is killed mid-fit, then a re-run: what became of each, as a dict.

    Run in its own process (`python tests/kill_worker.py DIR`): XGBoost's collective tracker lives in the
    scheduler, which a LocalCluster runs inside the driver, and a killed training worker has been seen to
    abort that whole process (2 of 5 runs: the tracker's native thread throws dmlc::Error "Broken pipe"
    writing to the dead worker, and std::terminate follows); a test process must survive that to report it."""
    import numpy as np
    import pandas as pd

    from ltr.dask_ranker import DaskXGBLambdaMART
    from ltr.data.engine import ComputeConfig, dask_client
    from ltr.rankers import RankerError

    rng = np.random.default_rng(4)  # 100 queries x 20 rows, 8 features, a label the features explain
    X = pd.DataFrame(rng.standard_normal((2000, 8)).astype("float32"), columns=[f"f{i}" for i in range(8)])
    y, q = 1 / (1 + np.exp(-X.to_numpy() @ rng.standard_normal(8))), np.repeat(np.arange(100), 20)
    params = dict(n_estimators=300, max_depth=4, early_stopping_rounds=None, validation_fraction=0.0,
                  npartitions=2)
    out: dict = {}
    with dask_client(ComputeConfig(engine="dask", n_workers=2, threads_per_worker=1, memory_limit="2GiB")) as c:
        with kill_mid_task(c, "fn", flag, delay_s=0.5):  # xgboost.dask's training task is named `fn`
            try:
                m = DaskXGBLambdaMART(**params).fit(X, y, q)
                out["first"] = {"rows": int(m.layout_["rows"].sum()), "trees": m.best_iteration_ + 1}
            except RankerError as e:
                out["first"] = {"error": str(e)}
        out["kill"] = flag.read_text()
        again = DaskXGBLambdaMART(**params | {"n_estimators": 5}).fit(X, y, q)
        out["again"] = {"rows": int(again.layout_["rows"].sum()), "trees": again.best_iteration_ + 1}
    out["input_rows"] = len(X)
    return out


if __name__ == "__main__":
    import json
    import sys

    print("RESULT " + json.dumps(train_with_a_killed_worker(Path(sys.argv[1]) / "killed")), flush=True)
