"""Feast benchmark: materialize throughput (Feast's path vs our bulk path) and online read latency.

    .venv/bin/python -m bench.bench_feast --out DIR [--rows 200000] [--reads 300]

Writes DIR/bench_feast.json. Data: ROWS (query, product) rows of the `lexical` view (14 float
features, synthetic values) so the store holds exactly ROWS entities. Both paths run in the same
process on the same file; the online contents they produce are compared on sampled queries.
Redis is started on loopback if redis-server exists (skipped otherwise, and said so in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import FeaturesConfig, RedisConfig
from features.lexical import LEXICAL_FEATURES
from features.store import LtrStore
from ltr.data.provenance import stamp


def make_source(features_dir: Path, rows: int, per_query: int = 100, seed: int = 0) -> list[str]:
    """A lexical.parquet of `rows` (query, product) pairs; returns the query ids."""
    rng = np.random.default_rng(seed)
    nq = max(1, rows // per_query)
    q = np.repeat([f"q_{i:08x}" for i in range(nq)], per_query)[:rows]
    p = np.tile([f"P{i:05d}" for i in range(per_query)], nq)[:rows]
    df = pd.DataFrame({"query_id": q, "product_id": p,
                       "event_timestamp": pd.Timestamp("2000-01-01", tz="UTC")})
    vals = rng.random((rows, len(LEXICAL_FEATURES)))
    vals[rng.random(vals.shape) < 0.05] = np.nan  # some unknowns, as in real data
    for i, f in enumerate(LEXICAL_FEATURES):
        df[f] = vals[:, i]
    features_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(features_dir / "lexical.parquet", index=False)
    return sorted(set(q))


def _redis(port: int):
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    c = redis.Redis(port=port)
    for _ in range(200):
        try:
            c.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    return None


def read_latency(store: LtrStore, qids: list[str], reads: int, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pids = [f"P{i:05d}" for i in range(100)]
    for q in qids[:5]:  # warm-up (registry cache, connections)
        store.get_online_features(q, pids)
    lat = []
    for q in rng.choice(qids, reads):
        t = time.perf_counter()
        store.get_online_features(str(q), pids)
        lat.append((time.perf_counter() - t) * 1000)
    a = np.array(lat)
    return {"reads": reads, "candidates": 100, "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


def bench_backend(kind: str, features_dir: Path, work: Path, rows: int, qids: list[str], reads: int,
                  port: int | None) -> dict:
    def cfg(db: int) -> FeaturesConfig:
        if kind == "redis":
            return FeaturesConfig(online_store="redis", redis=RedisConfig(port=port, db=db))
        return FeaturesConfig()

    feast_store = LtrStore(features_dir, cfg(0), store_dir=work / f"{kind}_feast").apply()
    t = time.perf_counter()
    feast_store.materialize(views=["lexical"])
    t_feast = time.perf_counter() - t
    bulk_store = LtrStore(features_dir, cfg(1), store_dir=work / f"{kind}_bulk").apply()
    t = time.perf_counter()
    n = bulk_store.bulk_materialize(views=["lexical"], progress=False)["lexical"]
    t_bulk = time.perf_counter() - t
    assert n == rows, (n, rows)
    pids = [f"P{i:05d}" for i in range(100)]
    same = all(feast_store.get_online_features(q, pids).equals(bulk_store.get_online_features(q, pids))
               for q in (qids[0], qids[len(qids) // 2], qids[-1]))
    return {
        "feast_materialize": {"seconds": round(t_feast, 2), "rows_per_s": round(rows / t_feast)},
        "bulk_materialize": {"seconds": round(t_bulk, 2), "rows_per_s": round(rows / t_bulk)},
        "speedup": round(t_feast / t_bulk, 1), "identical_online_reads": bool(same),
        "online_read": read_latency(bulk_store, qids, reads),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--backends", default="sqlite,redis")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"rows": args.rows, **stamp(), "features_per_row": len(LEXICAL_FEATURES), "host": platform.node(),
                 "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "backends": {}}
    with tempfile.TemporaryDirectory(prefix="bench_feast_") as tmp:
        work = Path(tmp)
        qids = make_source(work / "features", args.rows)
        for kind in args.backends.split(","):
            proc = None
            port = None
            if kind == "redis":
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                proc = _redis(port)
                if proc is None:
                    res["backends"]["redis"] = {"skipped": "redis-server not installed"}
                    continue
            try:
                res["backends"][kind] = bench_backend(kind, work / "features", work, args.rows, qids, args.reads, port)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
            print(kind, json.dumps(res["backends"][kind]), flush=True)
    res["load_avg_end"] = os.getloadavg()
    (args.out / "bench_feast.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
