"""End-to-end speed of the default labeller (fit the local grader on the world's judged pairs, then grade
every candidate pair) on a built-in world, as the main job runs it.

    .venv/bin/python -m bench.bench_grader_pipeline --out DIR [--seed 7] [--world DIR] [--rerun]

Writes DIR/bench_grader_pipeline.json: seconds for the whole `labels.run.label_pairs` call with the
default LabelConfig, pairs per second, the fit share, and the held-out calibration it reports. With
--rerun, runs it a second time in a fresh process-state-free way (same out dir) to show that the refitted
grader keeps its version and every pair comes from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from ltr.data.provenance import stamp


def run(out: Path, seed: int = 7, world: Path | None = None, rerun: bool = False) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from labels.config import LabelConfig
    from labels.run import label_pairs
    from ltr.sim.world import generate_world

    out.mkdir(parents=True, exist_ok=True)
    if world is None:
        world = out / "world"
        if not (world / "products.parquet").exists():
            generate_world(world, seed=seed)
    lab_dir = out / "labels"
    shutil.rmtree(lab_dir, ignore_errors=True)
    t0 = time.perf_counter()
    s = label_pairs(world, lab_dir / "labels.parquet", LabelConfig(), progress=True)
    secs = time.perf_counter() - t0
    meta = json.loads((lab_dir / "grader" / "grader.json").read_text())
    res = {
        "benchmark": "grader_pipeline",
        **stamp(),
        "world": str(world),
        "world_seed": seed,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "seconds": round(secs, 1),
        "n_pairs": s["n_pairs"],
        "pairs_per_second": round(s["n_pairs"] / secs, 1),
        "grader_fit_seconds": meta.get("seconds_total"),
        "grader_version": meta["version"],
        "n_train_pairs": meta["n_train_pairs"],
        "calibration_heldout": s.get("calibration"),
        "summary": s,
    }
    if rerun:
        t0 = time.perf_counter()
        s2 = label_pairs(world, lab_dir / "labels.parquet", LabelConfig(), progress=True)
        res["rerun"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "n_from_cache": s2["n_from_cache"],
            "n_graded_now": s2["n_graded_now"],
            "same_model": s2["model"] == s["model"],
        }
    (out / "bench_grader_pipeline.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--world", type=Path, default=None, help="an existing world/dataset dir (default: generate)"
    )
    ap.add_argument("--rerun", action="store_true", help="label a second time and report cache reuse")
    a = ap.parse_args()
    r = run(a.out, a.seed, a.world, a.rerun)
    print(
        json.dumps(
            {
                k: r[k]
                for k in (
                    "seconds",
                    "n_pairs",
                    "pairs_per_second",
                    "grader_fit_seconds",
                    "calibration_heldout",
                    "load_avg_1m_at_end",
                )
            }
            | {"rerun": r.get("rerun")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
