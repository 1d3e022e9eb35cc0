"""`make bench`: run every benchmark module and collect their JSON under --out.

Each benchmark is its own module (`python -m bench.<name> --out DIR`); this runner executes them in
separate processes (so one crash or OOM does not lose the others) and writes an index JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["bench_world", "bench_train", "bench_feast", "bench_crossencoder", "bench_labeler",
           "bench_serving", "bench_grader", "bench_ce_quality", "bench_ce_transfer"]


def extra_args(name: str) -> list[str]:
    """The speed benchmark measures the main job's fine-tuned cross-encoder when `make run` has made one
    (the figure the README reports); otherwise a fresh-head MiniLM cross-encoder."""
    ce = Path("runs/default/cross_encoder/llm_fold0")
    if name == "bench_crossencoder" and (ce / "config.json").exists():
        return ["--model", str(ce)]
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--only", nargs="*", default=None, help="subset of benchmark names")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name in args.only or BENCHES:
        if not (Path(__file__).parent / f"{name}.py").exists():
            index[name] = {"status": "missing"}
            continue
        t = time.time()
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}", "--out", str(args.out), *extra_args(name)])
        index[name] = {"status": "ok" if rc == 0 else f"failed (exit {rc})", "seconds": round(time.time() - t, 1)}
    (args.out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(json.dumps(index, indent=2))
    return 0 if all(v["status"] == "ok" for v in index.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
