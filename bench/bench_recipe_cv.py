"""Benchmark: which recipe changes beat the bi-encoder, chosen on training queries only.

It reads a finished run (e.g. `configs/homedepot.yaml`), drops the run's test queries before anything else,
and cross-validates the content-only trees of the champion's recipe (reports/champion_config.json: its label
transform and tree parameters; `ltr.train.content_only_config`) over the training queries, by whole query
(--folds, seeded). Every arm is scored cold (engagement absent), NDCG@10 with ESCI gains against the raters'
grades of the training queries, paired with the zero-shot bi-encoder and a 95% bootstrap CI over queries:

    the trees as the recipe stood before: BM25, coverage and attribute matches, no constraints
    + monotone: `model.monotone` (features/names.py MONOTONE)
    + title matches: the lexical view's typo-forgiving title features (features/title_match.py)
    + both (the recipe `configs/homedepot.yaml` declares)
    both, trained on every training query's human grade instead of the grader's (the ceiling)

The run's own labels are the grader's (its pilot's human grades on 2% of the training queries); the raters'
grades of the other training queries are read here only to score the folds, as a shop would score a recipe
on queries it has judged. The test split is never read.

    .venv/bin/python -m bench.bench_recipe_cv --run-dir runs/homedepot --config configs/homedepot.yaml \
        --out bench/results
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.provenance import stamp

K = 10


def load(run_dir: Path, config: Path) -> tuple[pd.DataFrame, object]:
    """The run's training frame without its test queries, with the raters' grades; the champion's config."""
    from ltr.data.config import load_config
    from ltr.data.dataset import Dataset
    from ltr.pipeline import run_test_queries
    from ltr.run_config import RunConfig
    from ltr.train_config import TrainConfig
    cfg = load_config(config, RunConfig)
    ds = Dataset.load(json.loads((run_dir / "reports" / "train_metrics.json").read_text())["dataset"])
    test = run_test_queries(cfg, ds)
    frame = pd.read_parquet(run_dir / "training_frame.parquet")
    frame = frame[~frame["query_id"].isin(test)].drop(columns=["grade"], errors="ignore")
    human = ds.judgments[["query_id", "product_id", "grade"]]
    frame = frame.merge(human, on=["query_id", "product_id"], how="inner").reset_index(drop=True)
    champion = TrainConfig.model_validate_json((run_dir / "reports" / "champion_config.json").read_text())
    return frame, champion


def cross_validated(frame: pd.DataFrame, cfg, folds: int, seed: int, content: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold cold scores of every row: the content-only recipe fitted on the other folds."""
    from ltr.data.splits import grouped_split
    from ltr.train import content_only_config, fit_ranker, mask_engagement
    cfg = content_only_config(cfg)
    f = frame if content is None else frame.assign(content_score=content)
    out = np.full(len(f), np.nan)
    for part in grouped_split(f["query_id"].to_numpy(), [1 / folds] * folds, seed):
        model = fit_ranker(f.loc[~part].reset_index(drop=True), cfg)
        out[part] = model.predict(mask_engagement(f.loc[part].reset_index(drop=True)), missing="nan")
    return out


def arms(frame: pd.DataFrame, champion, folds: int, seed: int) -> list[dict]:
    from features.title_match import TITLE_MATCH
    from ltr.data import metrics as M
    q, g = frame["query_id"].to_numpy(), frame["grade"].to_numpy()

    def ndcg(s) -> pd.Series:
        return M.ndcg_per_query(q, np.asarray(s, dtype="float64"), g, K)

    title = {f"lex_{n}" for n in TITLE_MATCH}

    def variant(monotone: bool, titles: bool):
        d = champion.model_dump()
        d["model"]["monotone"] = monotone
        if not titles:
            d["exclude_feature_prefixes"] = list(d["exclude_feature_prefixes"]) + sorted(title)  # exact names
        return type(champion).model_validate(d)

    base = ndcg(frame["bienc_cos"].fillna(-1))
    rows = [("zero-shot bi-encoder (bienc_cos)", base)]
    plan = [("trees as before (no constraints, no title matches)", variant(False, False), None),
            ("+ monotone", variant(True, False), None), ("+ title matches", variant(False, True), None),
            ("+ both (configs/homedepot.yaml)", variant(True, True), None),
            ("both, every training query's human grade (ceiling)", variant(True, True), g / 3)]
    for name, cfg, content in plan:
        t = time.time()
        rows.append((name, ndcg(cross_validated(frame, cfg, folds, seed, content))))
        print(f"  {name}: {time.time() - t:.0f} s", flush=True)
    return [{"arm": n, "ndcg@10": float(pq.mean()), "vs_bienc": M.paired_bootstrap(pq, base)} for n, pq in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)
    t0 = time.time()
    frame, champion = load(a.run_dir, a.config)
    result = {"bench": "recipe_cv", **stamp(), "run_dir": str(a.run_dir), "folds": a.folds, "fold_seed": a.seed,
              "n_train_queries": int(frame["query_id"].nunique()),
              "metric": "NDCG@10, ESCI gains, cold, out of fold over training queries (the test split unread)",
              "arms": arms(frame, champion, a.folds, a.seed)}
    for r in result["arms"]:
        v = r["vs_bienc"]
        print(f"{r['arm']:<54} ndcg@10 {r['ndcg@10']:.4f}  vs bi-encoder {v['diff']:+.4f} "
              f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "recipe_cv.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out / 'recipe_cv.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
