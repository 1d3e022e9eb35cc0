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
           "bench_serving", "bench_grader", "bench_ce_quality", "bench_ce_transfer", "bench_dask", "bench_encoders",
           "bench_retrieval", "bench_twotower", "bench_cold_route",
           "bench_counterfactual", "bench_unbiased", "bench_interleaving", "bench_workbench",
           "bench_scale"]


CE_QUALITY_WITH_LLM_LABELS = ["--extra-labels", "runs/default", "--esci-target", "gain", "--set", "val_fraction=0.2",
                              "--set", "epochs=1", "--set", "evals_per_epoch=2"]


#: the ranking service as the serving issue (#12) found it: `bench_serving` runs it beside the current one
SERVING_BASELINE_REV = "0f27b42"


def extra_args(name: str) -> list[str]:
    """When `make run` has been run, the speed benchmark measures its fine-tuned cross-encoder and the
    held-out quality benchmark also trains on its LLM labels table (the figures docs/features.md reports);
    otherwise a fresh-head MiniLM cross-encoder and ESCI grades alone. The serving benchmark always runs the
    baseline service beside (~7 min more), for ratios measured on the same machine and load."""
    if name == "bench_serving":  # the serving issue's acceptance: its goals with ratios to the service it found
        return ["--baseline-rev", SERVING_BASELINE_REV]
    ce = Path("runs/default/cross_encoder/llm_fold0")
    if name == "bench_crossencoder" and (ce / "config.json").exists():
        return ["--model", str(ce)]
    if name == "bench_ce_quality" and Path("runs/default/labels/labels.parquet").exists():
        return CE_QUALITY_WITH_LLM_LABELS
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
