"""Benchmark: counterfactual evaluation checked against the built-in world's truth (issue #28, parts 1-2).

1. Position propensities: the examination curve learnt from each world's log alone (intervention harvesting,
   the default, and the PBM EM), relative error to the world's true 1/k**eta at positions 1-10 (both relative
   to position 1, where the curve is identified), bootstrap intervals over queries, and whether they hold
   the truth. Goal: within 10% at positions 1-10 on the default built-in world.
2. Offline estimates: on `--seeds` small worlds (configs/smoke.yaml's), a content model (LambdaMART on the
   human judgments) is scored against the world's logging ranker by clipped IPS, SNIPS, the direct model and
   doubly robust. Both rankers are then replayed through the world's shoppers (`ltr.sim.replay`, the same
   session seed for both) and the estimator's 95% interval of the difference is checked against the
   replayed difference, and against the exact expected difference from the world's click model. Goal:
   covered in at least 8 of 10 seeds.

    .venv/bin/python -m bench.bench_counterfactual --out bench/results            # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.counterfactual.estimators import ESTIMATORS, OfflineEvaluator
from ltr.counterfactual.offline import candidate_pairs, logged_dataset, pair_features
from ltr.counterfactual.propensity import InterventionHarvesting, PositionBasedEM, propensity_curve
from ltr.counterfactual.validation import (
    WorldLoggingRanker,
    expected,
    fit_content_ranker,
    replay,
    traffic_weighted_difference,
)
from ltr.data.config import load_config
from ltr.data.provenance import stamp
from ltr.run_config import RunConfig
from ltr.sim.click_model import ClickModel, examination
from ltr.sim.world import WorldConfig, generate_world

OUTCOMES = ("clicked", "added_to_cart")
K = 10


def propensity_figures(world_dir: Path, n_boot: int, n_boot_em: int = 20) -> dict:
    """Both estimators' curves against the world's true examination, per position (the EM's bootstrap is
    shorter: each replicate iterates to convergence, ~2 s on the default world)."""
    ds, log = logged_dataset(world_dir)
    eta = ClickModel(**ds.metadata["config"]["click_model"]).eta
    truth = examination(np.arange(1, K + 1), eta)
    out = {"searches": log.n_searches, "impressions": len(log.pair), "true_eta": eta}
    models = ((InterventionHarvesting(max_position=K), n_boot), (PositionBasedEM(max_position=K), n_boot_em))
    for model, boots in models:
        t0 = time.perf_counter()
        _, curve = propensity_curve(log, n_boot=boots, model=model)
        err = curve.examination / truth - 1.0
        out[type(model).__name__] = {
            **curve.to_dict(), "seconds": round(time.perf_counter() - t0, 2),
            "true_examination": np.round(truth, 5).tolist(),
            "relative_error": np.round(err, 4).tolist(), "max_abs_relative_error": round(float(np.abs(err).max()), 4),
            "within_10pct_positions_1_10": bool((np.abs(err) <= 0.10).all()),
            "ci_holds_truth": int(((curve.ci_low <= truth) & (truth <= curve.ci_high)).sum())}
        print(type(model).__name__, np.round(err, 3).tolist(), flush=True)
    return out


def _scores(ranker) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"query_id": q, "product_id": s.index, "score": s.to_numpy()})
                      for q, s in ranker.scores.items()], ignore_index=True)


def coverage_seed(world_dir: Path, seed: int, replay_sessions: int, n_boot: int, settings: dict) -> dict:
    """One world: estimates under each setting, the replayed and the expected difference, and coverage."""
    ds, log = logged_dataset(world_dir)
    pairs = candidate_pairs(ds, log)
    feats = pair_features(ds, pairs)
    champion = fit_content_ranker(ds, feats)
    logging = WorldLoggingRanker(ds)
    searches = pd.Series(log.searches_per_query(), index=log.queries)
    t0 = time.perf_counter()
    rep_new = replay(world_dir, champion, replay_sessions, seed=seed, k=K)
    rep_old = replay(world_dir, logging, replay_sessions, seed=seed, k=K)
    t_replay = time.perf_counter() - t0
    replayed = traffic_weighted_difference(rep_new, rep_old, searches)
    exact = traffic_weighted_difference(expected(world_dir, champion, k=K),
                                        expected(world_dir, logging, k=K, draws=300, seed=seed), searches)
    logged_rate = {o: float(log.outcomes[o][log.position <= K].sum() / log.n_searches) for o in OUTCOMES}
    replayed_logging = {o: float((rep_old[o] / rep_old["searches"] * searches / searches.sum()).sum())
                        for o in OUTCOMES}
    row = {"seed": seed, "searches": log.n_searches, "replay_sessions_per_ranker": replay_sessions,
           "replay_seconds": round(t_replay, 1), "replayed_difference": replayed, "expected_difference": exact,
           "logged_rate": logged_rate, "replayed_logging_rate": replayed_logging, "estimates": {}}
    scores = _scores(champion)
    for name, kw in settings.items():
        t1 = time.perf_counter()
        res = OfflineEvaluator(k=K, n_boot=n_boot, seed=seed, **kw).fit(log, feats).evaluate(scores)
        est = {"support": res["support"], "seconds": round(time.perf_counter() - t1, 2)}
        for o in OUTCOMES:
            for e in ESTIMATORS:
                r = res["outcomes"][o][e]
                lo, hi = r["diff_ci95"]
                est[f"{o}/{e}"] = {"diff": round(r["diff"], 5), "ci95": [round(lo, 5), round(hi, 5)],
                                   "covers_replayed": bool(lo <= replayed[o] <= hi),
                                   "covers_expected": bool(lo <= exact[o] <= hi)}
        row["estimates"][name] = est
    return row


def coverage_summary(rows: list[dict], settings: dict) -> dict:
    out = {}
    for name in settings:
        s = {}
        for o in OUTCOMES:
            for e in ESTIMATORS:
                cells = [r["estimates"][name][f"{o}/{e}"] for r in rows]
                err = [c["diff"] - r["expected_difference"][o] for c, r in zip(cells, rows)]
                s[f"{o}/{e}"] = {"covers_replayed": f"{sum(c['covers_replayed'] for c in cells)}/{len(rows)}",
                                 "covers_expected": f"{sum(c['covers_expected'] for c in cells)}/{len(rows)}",
                                 "mean_error_vs_expected": round(float(np.mean(err)), 4),
                                 "mean_ci_width": round(float(np.mean([c["ci95"][1] - c["ci95"][0]
                                                                      for c in cells])), 4)}
        out[name] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--replay-sessions", type=int, default=6000, help="replayed searches per ranker and seed")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--config", type=Path, default=Path("configs/smoke.yaml"), help="world of the coverage runs")
    args = ap.parse_args()
    small = load_config(args.config, RunConfig).dataset.world
    settings = {"default (clip 100, query bootstrap)": {},
                "search bootstrap (clip 100)": {"unit": "search"},
                "clip 10 (query bootstrap)": {"clip": 10.0}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        generate_world(Path(tmp) / "default", seed=7, cfg=WorldConfig(), progress=False)
        prop = {"default_world_seed7": propensity_figures(Path(tmp) / "default", args.n_boot)}
        rows, prop_small = [], []
        for seed in args.seeds:
            d = Path(tmp) / f"w{seed}"
            generate_world(d, seed=seed, cfg=small, progress=False)
            prop_small.append(propensity_figures(d, 50))
            rows.append(coverage_seed(d, seed, args.replay_sessions, args.n_boot, settings))
            print(json.dumps({"seed": seed, "replayed": rows[-1]["replayed_difference"],
                              "expected": rows[-1]["expected_difference"]}), flush=True)
    prop["small_worlds_max_abs_relative_error"] = {
        name: [p[name]["max_abs_relative_error"] for p in prop_small]
        for name in ("InterventionHarvesting", "PositionBasedEM")}
    summary = coverage_summary(rows, settings)
    res = {"benchmark": "counterfactual", **stamp(), "k": K, "coverage_world": small.model_dump(),
           "seeds": args.seeds, "propensity": prop, "coverage": summary, "runs": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_counterfactual.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
