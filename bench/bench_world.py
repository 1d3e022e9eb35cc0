"""Benchmark: built-in world generation time (goal: well under 60 s on 2 cores) and how biased its
engagement is across seeds (Spearman grade vs CTR, goal band 0.3-0.6); simulated engagement on ESCI.

    .venv/bin/python -m bench.bench_world --out bench/results
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from ltr.data.esci import esci_sample_dir
from ltr.data.provenance import stamp
from ltr.sim.world import WorldConfig, generate_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            t0 = time.perf_counter()
            s = generate_world(Path(tmp) / f"w{seed}", seed=seed, cfg=WorldConfig(), progress=False)
            e = s["engagement"]
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 2), "counts": s["counts"],
                         "spearman_grade_ctr": e["spearman_grade_ctr"], "spearman_pairs": e["spearman_pairs"],
                         "queries_top_clicked_irrelevant": e["queries_top_clicked_irrelevant"],
                         "irrelevant_share_top10_by_ctr": e["irrelevant_share_top10_by_ctr"],
                         "purchase_per_click_by_grade": {g: v["purchase_per_click"] for g, v in e["by_grade"].items()},
                         "share_of_purchases_by_grade": {g: v["share_of_purchases"] for g, v in e["by_grade"].items()},
                         "truth_grade_distribution": s["truth_grade_distribution"],
                         "judgment_agreement_with_truth": s["judgment_agreement_with_truth"]})
            print(json.dumps(runs[-1]))
        esci = esci_sample_dir()
        esci_res = None
        if (esci / "judgments.parquet").exists():
            from ltr.data.esci import load_esci
            from ltr.sim.sessions import simulate_engagement
            t0 = time.perf_counter()
            load_esci(esci, Path(tmp) / "esci")
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = simulate_engagement(Path(tmp) / "esci", seed=7, progress=False)
            esci_res = {"load_seconds": round(t_load, 2), "simulate_seconds": round(time.perf_counter() - t0, 2),
                        "impressions": rep["impressions"], "spearman_grade_ctr": rep["spearman_grade_ctr"],
                        "queries_top_clicked_irrelevant": rep["queries_top_clicked_irrelevant"]}
            print(json.dumps(esci_res))
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "world", **stamp(), "cpu_count": os.cpu_count(), "world": runs,
           "esci_simulated_engagement": esci_res}
    (args.out / "bench_world.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
