"""Benchmark: experiment group (f), engagement labels from smoothed rates vs LambdaMART on raw clicks (naive and
XGBoost's `lambdarank_unbiased`), on a built-in world, with the propensities XGBoost learnt beside intervention
harvesting and the world's true examination curve (issue #28 part 4; docs/unbiased.md).

The frame is built here without Feast, so the benchmark runs in a minute: one row per candidate pair with the
lexical, product and retrieval features `ltr.counterfactual.offline.pair_features` computes (no engagement
features), engagement counts from the label window (the last `label_days` days, as the pipeline's frame), the
true grade for evaluation, and a noisy grader score for the arms that need one.

    .venv/bin/python -m bench.bench_unbiased --out bench/results                 # default world, 3 seeds
    .venv/bin/python -m bench.bench_unbiased --sessions 12000 --n-queries 60 --n-products 800 --n-candidates 30
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.counterfactual.offline import pair_features
from ltr.data.dataset import Dataset
from ltr.data.engagement import COUNT_COLUMNS, pair_counts
from ltr.data.provenance import stamp
from ltr.experiments import run_experiments
from ltr.pipeline import engagement_cutoff
from ltr.sim.world import WorldConfig, generate_world
from ltr.train_config import ExperimentConfig
from ltr.unbiased import ClickLog


def world_frame(world_dir: str | Path, label_days: int = 7, seed: int = 0) -> tuple[pd.DataFrame, ClickLog]:
    """(training frame, click log) of a world directory, the pipeline's windows without Feast (module docstring)."""
    ds = Dataset.load(world_dir)
    cutoff = engagement_cutoff(ds.impressions, label_days)
    pairs = ds.candidates[["query_id", "product_id"]].reset_index(drop=True)
    feats = pair_features(ds, pairs).drop(columns=["query_id", "product_id"], errors="ignore")
    frame = pd.concat([pairs, feats.reset_index(drop=True)], axis=1)
    frame = frame.merge(pair_counts(ds.impressions, start=cutoff), on=["query_id", "product_id"], how="left")
    for c in COUNT_COLUMNS:
        frame[c] = frame[c].fillna(0.0)
        frame[f"heldout_{c}"] = frame[c]
    frame = frame.merge(ds.load_truth()[["query_id", "product_id", "grade"]], on=["query_id", "product_id"])
    noise = np.random.default_rng(seed).normal(0, 0.15, len(frame))
    frame["content_score"] = np.clip(frame["grade"] / 3 + noise, 0, 1)
    frame = frame.merge(ds.queries[["query_id", "segment"]], on="query_id", how="left")
    return frame.sort_values(["query_id", "product_id"]).reset_index(drop=True), ClickLog.from_dataset(ds, cutoff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write bench_unbiased.json|md here")
    ap.add_argument("--world-seed", type=int, default=7)
    ap.add_argument("--sessions", type=int, default=25000)
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--n-products", type=int, default=6000)
    ap.add_argument("--n-candidates", type=int, default=40)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--window", choices=["labels", "features"], default="labels")
    ap.add_argument("--bias-norm", type=float, default=1.0)
    ap.add_argument("--n-estimators", type=int, default=300)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        wcfg = WorldConfig(n_products=args.n_products, n_queries=args.n_queries, n_candidates=args.n_candidates,
                           sessions=args.sessions, days=args.days)
        generate_world(Path(tmp) / "world", seed=args.world_seed, cfg=wcfg, progress=False)
        frame, clicks = world_frame(Path(tmp) / "world")
    cfg = ExperimentConfig.model_validate({"arms": ["f"], "click_window": args.window,
                                           "click_bias_norm": args.bias_norm,
                                           "train": {"model": {"n_estimators": args.n_estimators}}})
    md, js = run_experiments(frame, cfg, clicks=clicks, notes=[f"world seed {args.world_seed}, {wcfg.sessions} "
                                                               f"sessions, click window '{args.window}'"])
    js |= {"seconds": round(time.perf_counter() - t0, 1), "world": wcfg.model_dump(), **stamp()}
    print(md)
    print(f"total {js['seconds']} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_unbiased.md").write_text(md)
        (args.out / "bench_unbiased.json").write_text(json.dumps(js, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
