"""Benchmark: the cold route's choice rule over many query splits of a finished run's training frame.

One held-out split of the ESCI sample (29 of 94 queries) cannot tell two routes apart: its standard error is
larger than their difference (docs/cold.md). This benchmark re-splits the run's training frame by
query (70/30, seeds 0..N-1; the run's own split is its `seed`, flagged in the JSON), and on every split
fits the trees at the run's operating point, chooses the cold route on the training part under each status
quo, rule and gate (`ltr.cold_route.STATUS_QUO` x `RULES` x gate on/off, all from the same cross-validated
figures) and scores the test part's queries with engagement absent: trees alone, the route under each
choice, the content-only model and the zero-shot bi-encoder (`bienc_cos` alone), NDCG@10 with ESCI gains as
the run reports it.

`--dev` first drops the run's own test queries and re-splits only its training queries (seeds 100..): a rule
compared there is compared without a query the run reports on, so it can be settled before the run's test
figures are read.

    .venv/bin/python -m bench.bench_cold_route --out bench/results --run-dir runs/esci16 --config configs/esci.yaml
    .venv/bin/python -m bench.bench_cold_route --out bench/results --run-dir runs/esci16 --config configs/esci.yaml \
        --dev
    .venv/bin/python -m bench.bench_cold_route --out bench/results --run-dir runs/default   # after `make run`

Splits overlap (each query is tested in about 30% of them), so the spread across splits understates the
uncertainty of a new sample; `paired` gives each difference's mean over splits and the share of splits it
was >= 0. The run's frame is fixed: its cross-fitted `ce_score`, the grader's labels and the simulated
engagement are the run's, so only the ranker, the route and the split change here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.provenance import stamp


def run_config(config: Path, run_dir: Path):
    """The run's training config at its tuned operating point (reports/summary.json, trials.csv)."""
    from ltr.data.config import load_config
    from ltr.run_config import RunConfig
    from ltr.tuning import trial_config

    cfg = load_config(config, RunConfig)
    op = json.loads((run_dir / "reports" / "summary.json").read_text())["operating_point"]
    trials = pd.read_csv(run_dir / "reports" / "trials.csv")
    row = trials.loc[(trials["params_alpha"] - op["alpha"]).abs().idxmin()]
    params = {k[len("params_"):]: row[k] for k in trials.columns if k.startswith("params_")}
    params["max_depth"] = int(params["max_depth"])
    return trial_config(cfg.train.model_copy(update={"seed": cfg.seed}), params | op), cfg.seed


def per_query(frame: pd.DataFrame, scores) -> pd.Series:
    from ltr.data import metrics as M

    return M.per_query_metrics(frame, np.asarray(scores, dtype="float64"), k=10, metrics=())["ndcg@10"]


def one_split(frame: pd.DataFrame, cfg, seed: int) -> dict:
    """Every cold scorer's held-out NDCG@10 on one 70/30 query split."""
    from ltr.cold_route import RULES, STATUS_QUO, ColdRoute, routed_scores, zscore_by_query
    from ltr.rankers import split_frame
    from ltr.train import content_only_config, fit_ranker, mask_engagement

    train, test = split_frame(frame, "query_id", [1 - cfg.test_fraction, cfg.test_fraction], seed)
    trees = fit_ranker(train, cfg)
    feats = list(trees.feature_names_)
    cold, qid = mask_engagement(test), test["query_id"].to_numpy()
    out = {"seed": seed, "train_queries": int(train["query_id"].nunique()), "test_queries": int(len(set(qid))),
           "choice": {}, "ndcg@10": {}}
    scored = None
    for quo, rule, gate in itertools.product(STATUS_QUO, RULES, (True, False)):
        route = ColdRoute(seed=cfg.seed, status_quo=quo, rule=rule, gate=gate).fit(train, cfg, feats, scored=scored)
        scored, name = route.scored_, f"{quo}/{rule}" + ("/gated" if gate else "")
        out["choice"][name] = route.scorer_.name
        out["ndcg@10"][f"route {name}"] = per_query(test, routed_scores(trees, route, cold, qid)[0])
    out["ndcg@10"]["trees"] = per_query(test, trees.predict(cold, missing="nan"))
    ccfg = content_only_config(cfg)
    out["ndcg@10"]["content_only"] = per_query(test, fit_ranker(train, ccfg).predict(cold, missing="nan"))
    out["ndcg@10"]["bienc_zero_shot"] = per_query(test, zscore_by_query(test["bienc_cos"], qid))
    return out


def summarise(splits: list[dict]) -> dict:
    means = pd.DataFrame([{k: float(v.mean()) for k, v in s["ndcg@10"].items()} for s in splits])
    routes = [c for c in means.columns if c.startswith("route ")]
    pairs = [(r, b) for r in routes for b in ("bienc_zero_shot", "trees", "content_only")]
    pairs += [(a, b) for a, b in itertools.combinations(routes, 2)]
    paired = {}
    for a, b in pairs:
        d = means[a] - means[b]
        paired[f"{a} - {b}"] = {"mean": round(float(d.mean()), 4), "sd_over_splits": round(float(d.std(ddof=1)), 4),
                                "share_of_splits_ge_0": round(float((d >= -1e-12).mean()), 3)}
    choices = {rule: pd.Series([s["choice"][rule] for s in splits]).value_counts().to_dict()
               for rule in splits[0]["choice"]}
    return {"mean_ndcg@10": means.mean().round(4).to_dict(), "paired": paired, "choices": choices}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for bench_cold_route_<run directory name>.json")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="a finished `ltr run` directory")
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"), help="that run's config")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--dev", action="store_true", help="only the run's training queries (its test split dropped)")
    a = ap.parse_args(argv)
    frame_path = a.run_dir / "training_frame.parquet"
    if not frame_path.exists():
        print(f"skipped: {frame_path} does not exist. Fix: run `ltr run --config {a.config} --out {a.run_dir}` first.")
        return {}
    from tqdm import tqdm

    cfg, run_seed = run_config(a.config, a.run_dir)
    frame = pd.read_parquet(frame_path)
    first_seed = 0
    if a.dev:
        from ltr.rankers import split_frame

        frame = split_frame(frame, "query_id", [1 - cfg.test_fraction, cfg.test_fraction], run_seed)[0]
        first_seed = 100  # seeds apart from the run's own, which no longer splits this frame the run's way
    t0, splits = time.perf_counter(), []
    for seed in tqdm(range(first_seed, first_seed + a.splits), desc="splits"):
        splits.append(one_split(frame, cfg, seed))
    res = {"benchmark": "bench_cold_route", "run_dir": str(a.run_dir), "config": str(a.config), "dev": a.dev,
           **stamp(), "queries": int(frame["query_id"].nunique()), "test_fraction": cfg.test_fraction,
           "run_split_seed": None if a.dev else run_seed,
           "metric": "ndcg@10 (ESCI gains), test queries with engagement absent", **summarise(splits),
           "splits": [s | {"ndcg@10": {k: round(float(v.mean()), 4) for k, v in s["ndcg@10"].items()}} for s in splits],
           "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_cold_route_{a.run_dir.name}{'_dev' if a.dev else ''}.json"
    (out / name).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "splits"}, indent=2))
    return res


if __name__ == "__main__":
    main()
