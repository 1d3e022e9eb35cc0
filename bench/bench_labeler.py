"""Labeler throughput against a local OpenAI-compatible server with simulated latency.

    .venv/bin/python -m bench.bench_labeler --out DIR [--latency 0.05] [--pairs 160]

The server (tests/openai_server.py) runs in its own process so its threads do not compete with the
client for the GIL. Measures pairs/s at concurrency 1 and 16 in the same run; goal: >= 10x.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ltr.data.provenance import stamp

REPO = Path(__file__).resolve().parents[1]


def _pairs(n: int):
    from labels.backends.base import Pair
    from ltr.data.schemas import query_id
    out = []
    for i in range(n):
        q = f"bench query {i % 20}"
        out.append(Pair(query_id(q), q, f"P{i}", {"title": f"product {i}", "brand": "Acme", "category": "Bench"}))
    return out


def measure(base_url: str, n: int, concurrency: int) -> dict:
    from labels.backends.openai import OpenAIBackend
    from labels.config import OpenAISettings
    be = OpenAIBackend(OpenAISettings(base_url=base_url, model="bench", api_key="k", concurrency=concurrency,
                                      timeout_s=30))
    pairs = _pairs(n)
    t0 = time.perf_counter()
    res = be.grade(pairs)
    dt = time.perf_counter() - t0
    assert len(res) == n
    return {"concurrency": concurrency, "pairs": n, "seconds": round(dt, 3), "pairs_per_s": round(n / dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--pairs", type=int, default=160)
    a = ap.parse_args()
    srv = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), "--latency", str(a.latency)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        port = int(line.split()[1])
        base = f"http://127.0.0.1:{port}/v1"
        measure(base, 4, 1)  # warm-up
        one = measure(base, max(20, a.pairs // 8), 1)
        many = measure(base, a.pairs, 16)
    finally:
        srv.stdin.close()
        srv.wait(timeout=10)
    res = {"latency_s": a.latency, **stamp(), "concurrency_1": one, "concurrency_16": many,
           "speedup": round(many["pairs_per_s"] / one["pairs_per_s"], 2), "goal_speedup": 10.0}
    res["meets_goal"] = res["speedup"] >= 10.0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_labeler.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
