"""Benchmark: LambdaMART on 5,000,000 rows x 40 features, 300 trees: one process vs Dask (2 workers).

Both modes train on the same synthetic table (`bench.bench_train.make_data`: standard-normal float32
features with 2% missing, a label that is a sigmoid of a random linear score plus one interaction and
noise, 100 rows per query, rows shuffled as real data arrives) and are scored on the same held-out
queries (10% more rows from the same generator, grades = round(3 x label)). Each mode runs in its own
child process, so its peak RSS is its own: the single process's, and for Dask the driver's and every
worker's (a LocalCluster of worker processes started inside that child, `threads_per_worker=1`).

    .venv/bin/python -m bench.bench_dask --out bench/results            # 5M rows (the issue's size)
    .venv/bin/python -m bench.bench_dask --out DIR --rows 1000000       # a smaller run

fit_s is the ranker's `fit` (sorting by query, partitioning, shipping to the workers and training);
data generation is not timed. `wall_ratio_dask_over_local` > 1 means Dask was slower. fit_cpu_s is the
CPU time of the fit (for Dask: driver plus both workers), the figure to trust on a machine shared with
other jobs, where wall time includes waiting for a core; each mode also records the 1-minute load
average sampled every 15 s while it ran (min / mean / max), and the JSON is rewritten after each mode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.provenance import stamp


def _rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries it over fork and exec, so a Dask
    worker would report its parent's peak (measured: a worker of an 838 MB driver said 837 MB, VmHWM 76 MB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _data(a) -> tuple:
    from bench.bench_train import make_data

    n_test = a.rows // 10
    X, y, q = make_data(a.rows + n_test, a.features, a.group, a.seed)
    test = q >= (a.rows + n_test) // a.group - n_test // a.group   # the last queries are held out
    return X[~test], y[~test], q[~test], X[test].reset_index(drop=True), y[test], q[test]


def _ndcg(model, Xt, yt, qt) -> float:
    from ltr.data.metrics import ndcg_per_query

    grade = np.clip(np.round(yt * 3), 0, 3).astype(int)
    return float(np.nanmean(ndcg_per_query(pd.Series(qt), model.predict(Xt), grade, 10)))


def run_mode(a) -> dict:
    """One mode in this process; prints one JSON line."""
    from ltr.rankers import make_ranker

    X, y, q, Xt, yt, qt = _data(a)
    params = dict(n_estimators=a.trees, max_depth=6, learning_rate=0.1, early_stopping_rounds=None,
                  validation_fraction=0.0, random_state=a.seed)
    out = {"mode": a.mode, "train_rows": len(X), "test_rows": len(Xt), "rss_after_data_mb": round(_rss_mb())}
    if a.mode == "local":
        model = make_ranker("xgboost", n_jobs=a.workers, **params)
        t0, c0 = time.perf_counter(), _cpu_s()
        model.fit(X, y, q)
        out["fit_s"], out["fit_cpu_s"] = round(time.perf_counter() - t0, 2), round(_cpu_s() - c0, 1)
    else:
        from ltr.data.engine import ComputeConfig, dask_client

        t0 = time.perf_counter()
        with dask_client(ComputeConfig(engine="dask", n_workers=a.workers, threads_per_worker=1)) as client:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 2)
            from ltr.dask_ranker import DaskXGBLambdaMART
            model = DaskXGBLambdaMART(**params)
            w0 = client.run(_cpu_s)
            t0, c0 = time.perf_counter(), _cpu_s()
            model.fit(X, y, q)
            out["fit_s"] = round(time.perf_counter() - t0, 2)
            w1 = client.run(_cpu_s)
            out["fit_cpu_s"] = round(_cpu_s() - c0 + sum(w1[w] - w0.get(w, 0.0) for w in w1), 1)
            out["partitions"] = len(model.layout_)
            out["groups_split"] = int((model.layout_["first"].to_numpy()[1:]
                                       <= model.layout_["last"].to_numpy()[:-1]).sum())
            peaks = client.run(_rss_mb)
            out["worker_peak_rss_mb"] = {w.rsplit(":", 1)[-1]: round(v) for w, v in peaks.items()}
    out["ndcg@10_heldout"] = round(_ndcg(model, Xt, yt, qt), 4)
    out["peak_rss_mb"] = round(_rss_mb())
    print("RESULT " + json.dumps(out), flush=True)
    return out


def _child(mode: str, a) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_dask", "--mode", mode, "--rows", str(a.rows), "--features",
           str(a.features), "--trees", str(a.trees), "--group", str(a.group), "--workers", str(a.workers),
           "--seed", str(a.seed), "--out", a.out]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"mode": mode, "failed": f"exit {p.returncode}", "stderr_tail": p.stderr[-2000:]}
    return json.loads(lines[-1][7:]) | {"process_wall_s": round(time.perf_counter() - t0, 1)}


class _LoadSampler:
    """The 1-minute load average every `every_s` seconds while the modes run: on a machine shared with
    other jobs the wall times mean little without it (start and end alone miss what happened between)."""

    def __init__(self, every_s: float = 15.0):
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._t.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every_s)

    def take(self) -> dict:
        """min / mean / max of the samples since the last take (one mode's load), then start afresh."""
        s, self.samples = self.samples or [os.getloadavg()[0]], []
        return {"load_avg_1m_min": round(min(s), 2), "load_avg_1m_mean": round(sum(s) / len(s), 2),
                "load_avg_1m_max": round(max(s), 2), "load_samples": len(s)}

    def stop(self) -> None:
        self._stop.set()


def _write(out: Path, res: dict) -> None:
    """bench_dask.json, rewritten after each mode (atomically), so a run stopped in the second mode keeps
    the first one's figures (`complete: false`)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "bench_dask.json.tmp"
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out / "bench_dask.json")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for bench_dask.json")
    ap.add_argument("--rows", type=int, default=5_000_000, help="training rows")
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--group", type=int, default=100, help="rows per query")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers; also the single process's threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["both", "local", "dask"], default="both")
    a = ap.parse_args(argv)
    if a.mode != "both":
        return run_mode(a)
    import xgboost

    res = {"benchmark": "bench_dask", **stamp(), "rows": a.rows, "features": a.features, "trees": a.trees,
           "rows_per_query": a.group, "workers": a.workers, "threads_single_process": a.workers,
           "data": "bench.bench_train.make_data (synthetic, see module docstring)",
           "load_avg_1m_start": os.getloadavg()[0], "cpu_count": os.cpu_count(),
           "xgboost": xgboost.__version__, "python": platform.python_version()}
    out, load = Path(a.out), _LoadSampler()
    for mode in ("local", "dask"):
        res[mode] = _child(mode, a) | load.take()
        _write(out, res | {"complete": False})
    load.stop()
    res["load_avg_1m_end"] = os.getloadavg()[0]
    res["complete"] = True
    if "fit_s" in res["local"] and "fit_s" in res["dask"]:
        res["wall_ratio_dask_over_local"] = round(res["dask"]["fit_s"] / res["local"]["fit_s"], 3)
        res["ndcg_diff_dask_minus_local"] = round(res["dask"]["ndcg@10_heldout"] - res["local"]["ndcg@10_heldout"], 4)
    _write(out, res)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
