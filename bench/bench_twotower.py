r"""Two-tower fine-tuning with a curriculum (features/twotower) against the zero-shot bi-encoder, held out.

For each dataset (the ESCI sample `../shared/data/esci/`, the built-in world) and each of K query-grouped
folds: the other folds' queries are split into training and early-stopping queries; BM25 and the
zero-shot bi-encoder retrieve over the whole catalog and `ltr.retrieval.mine` sorts every retrieved pair
into a difficulty level; a label budget is spent on the training queries' pairs either by
`ltr.retrieval.allocate_budget` (mined) or uniformly at random from the same pool (the same count). A
pair is labelled with its human grade where the dataset has one, else by the local grader tier of
`labels/` (`FineTunedGrader`, fitted on the training folds' human grades only): no capable LLM is
reachable here, so the grader is the labeler. Arms, all trained from all-MiniLM-L6-v2 with one recipe:
  curriculum  mined pairs, stages easy -> hard        unordered  the same triplets, shuffled
  random      random pairs at equal count, curriculum  zero_shot the base model
  curriculum_last (on request): the curriculum without early stopping, its last weights (a diagnostic)
Held-out queries are scored (a) by re-ranking their judged candidates: NDCG@10 with ESCI and exponential
gains, Irrelevant@10 (ESCI: human grades; world: true grades), and (b) by retrieval over the whole catalog:
recall@50 of the query's judged Exact products (world: also exact@50, the share of true Exact products in
the top 50 by ground truth over every product). A paired bootstrap over queries gives each difference's
95% interval. Segments: the world's head / torso / tail; ESCI has no query frequencies, so only a query
length proxy (<= 3 words vs longer) is reported.

    .venv/bin/python -m bench.bench_twotower --out DIR [--datasets esci world] [--folds 3] [--budget 1600]
        [--only-folds 0] [--arms zero_shot curriculum unordered random] [--set lr=5e-5 ...]

Resumable: each (dataset, fold, arm) writes its per-query metrics under DIR/twotower/ and is skipped when
there; `twotower.json` and `twotower.md` (the table in docs/retrieval.md) are rebuilt from whatever is done, keeping the
datasets an earlier run wrote and this one did not redo (each dataset records its own run: argv, config,
peak RSS, and `seconds_recorded`, the labelling + arm seconds summed over every run that made its figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import torch

from bench.bench_ce_quality import parse_set
from ltr.data import metrics as M
from ltr.data.provenance import stamp

ARMS = ("zero_shot", "curriculum", "unordered", "random", "curriculum_last")
METRICS = ("ndcg@10", "ndcg_exp@10", "irrelevant@10", "recall@50", "exact@50")
LOWER_IS_BETTER = {"irrelevant@10"}
COMPARISONS = (("curriculum", "zero_shot"), ("unordered", "zero_shot"), ("random", "zero_shot"),
               ("curriculum", "unordered"), ("curriculum", "random"), ("curriculum_last", "zero_shot"))
DEFAULT_ARMS = ARMS[:4]  # curriculum_last (no early stopping: the last weights) is a diagnostic, on request
BENCH_DEFAULTS = {"max_length": 64, "batch_size": 32, "epochs_per_stage": 1}


@dataclass
class Data:
    """One dataset as the benchmark needs it. human: the grades a labeler may use (query_id, product_id,
    grade); eval: the grades held-out queries are scored with; segment: per query_id (may be empty)."""

    name: str
    products: pd.DataFrame
    queries: pd.DataFrame
    human: pd.DataFrame
    eval: pd.DataFrame
    segment: pd.Series
    candidates: pd.DataFrame | None = None  # world: the candidate lists (validation pairs)


# --- data -----------------------------------------------------------------------------------------

def esci_data() -> Data:
    from bench.bench_ce_quality import load_esci
    from ltr.data.esci import esci_sample_dir

    products, judg, queries = load_esci(esci_sample_dir())
    human = judg[["query_id", "product_id", "grade"]].astype({"grade": int})
    words = queries.set_index("query_id")["query"].str.split().str.len()
    seg = pd.Series(np.where(words <= 3, "short_query", "long_query"), index=words.index, name="segment")
    return Data("esci", products, queries, human, human, seg)


def world_data(root: Path, seed: int) -> Data:
    from ltr.sim.world import generate_world

    if not (root / "truth.parquet").exists():
        generate_world(root, seed=seed, progress=False)
    products = pd.read_parquet(root / "products.parquet")
    queries = pd.read_parquet(root / "queries.parquet")
    human = pd.read_parquet(root / "judgments.parquet")[["query_id", "product_id", "grade"]]
    truth = pd.read_parquet(root / "truth.parquet")[["query_id", "product_id", "grade"]]
    cand = pd.read_parquet(root / "candidates.parquet")[["query_id", "product_id"]]
    return Data("world", products, queries, human.astype({"grade": int}), truth.astype({"grade": int}),
                queries.set_index("query_id")["segment"], cand)


def true_exact(data: Data, qids: list[str]) -> dict[str, np.ndarray]:
    """World only: per query, a bool over the catalog rows, True where the true grade is Exact."""
    from ltr.sim.world import ATTRS, _grades_for

    p = data.products
    attrs = {a: p[a].to_numpy() for a in ATTRS}
    q = data.queries.set_index("query_id")
    return {qid: _grades_for(q.loc[qid], p["product_type"].to_numpy(), attrs) == 3 for qid in qids}


def mined_pool(data: Data, out: Path, max_length: int) -> pd.DataFrame:
    """Every query's retrieved pairs with their level (cached: retrieval embeds the whole catalog)."""
    from ltr.retrieval import RetrievalConfig, mine, retrieve

    path = out / "mined.parquet"
    if path.exists():
        return pd.read_parquet(path)
    t = time.time()
    mined = mine(retrieve(data.products, data.queries, RetrievalConfig(k=50, bienc_max_length=max_length),
                          progress=True))
    mined.to_parquet(path)
    print(f"[{data.name}] retrieved + mined {len(mined)} pairs in {time.time() - t:.0f}s", flush=True)
    return mined


def folds(qids: list[str], k: int, seed: int) -> dict[str, int]:
    uq = np.array(sorted(qids))
    np.random.default_rng(seed).shuffle(uq)
    return {q: i % k for i, q in enumerate(uq)}


# --- labelling -------------------------------------------------------------------------------------

class Labeler:
    """Human grade where the dataset has one for the pair, else the grader's (fitted on `human`)."""

    def __init__(self, data: Data, human: pd.DataFrame) -> None:
        from labels.backends.grader import FineTunedGrader
        from ltr.data.dataset import complete_products

        self.data, self.human = data, human.set_index(["query_id", "product_id"])["grade"]
        self.rows = complete_products(data.products).set_index("product_id", drop=False).to_dict("index")
        self.qtext = data.queries.set_index("query_id")["query"]
        self.grader = FineTunedGrader().fit(*self._inputs(human), human["grade"].to_numpy())
        self.grader_meta = {"version": self.grader.version, **{k: self.grader.meta[k] for k in (
            "n_train_pairs", "n_train_queries", "train_kappa_inner_cv", "train_spearman_inner_cv")}}

    def _inputs(self, pairs: pd.DataFrame) -> tuple[list[str], list[dict]]:
        return ([self.qtext[q] for q in pairs["query_id"]], [self.rows[p] for p in pairs["product_id"]])

    def __call__(self, pairs: pd.DataFrame) -> pd.DataFrame:
        key = pd.MultiIndex.from_frame(pairs[["query_id", "product_id"]])
        grade = self.human.reindex(key).to_numpy()
        todo = np.isnan(grade)
        if todo.any():
            qs, ps = self._inputs(pairs[todo])
            grade[todo] = self.grader.predict_grade(self.grader.predict_proba(qs, ps))
        return pairs.assign(grade=grade.astype(int), label_source=np.where(todo, "grader", "human"))


def training_sets(pool: pd.DataFrame, budget: int, seed: int) -> dict[str, pd.DataFrame]:
    """The mined budget allocation and random pairs of the same pool at the same count."""
    from ltr.retrieval import allocate_budget

    mined = allocate_budget(pool, budget, seed=seed)
    rnd = pool.sample(n=len(mined), random_state=seed).sort_values(["query_id", "product_id"])
    return {"mined": mined.reset_index(drop=True), "random": rnd.reset_index(drop=True)}


def validation_pairs(data: Data, val_q: set[str], label: Labeler) -> pd.DataFrame:
    """Early-stopping pairs: ESCI's human judgments of the validation queries; the world's candidate lists
    of those queries, labelled like training pairs (its true grades are for evaluation only)."""
    if data.candidates is None:
        return data.human[data.human["query_id"].isin(val_q)].reset_index(drop=True)
    return label(data.candidates[data.candidates["query_id"].isin(val_q)].reset_index(drop=True))


# --- scoring ---------------------------------------------------------------------------------------

def recall_at(top: np.ndarray, relevant: np.ndarray) -> float:
    return float(relevant[top].sum() / relevant.sum()) if relevant.sum() else float("nan")


def per_query_metrics(data: Data, tower, test_q: list[str], exact: dict[str, np.ndarray] | None,
                      batch: int) -> pd.DataFrame:
    """One row per held-out query: re-ranking metrics on its graded candidates, retrieval over the catalog."""
    from features.text import product_texts

    pids = data.products["product_id"].to_numpy()
    pemb = tower.embed(product_texts(data.products), batch, progress=False)
    qtext = data.queries.set_index("query_id")["query"]
    qemb = dict(zip(test_q, tower.embed([qtext[q] for q in test_q], batch)))
    pos = pd.Series(np.arange(len(pids)), index=pids)
    ev = data.eval[data.eval["query_id"].isin(set(test_q))].reset_index(drop=True)
    score = np.einsum("ij,ij->i", np.stack([qemb[q] for q in ev["query_id"]]), pemb[pos[ev["product_id"]].to_numpy()])
    out = M.per_query_metrics(ev, score, metrics=())
    rec, ex = {}, {}
    for q in test_q:
        top = np.argsort(-(pemb @ qemb[q]), kind="stable")[:50]
        rel = np.zeros(len(pids), bool)
        rel[pos[ev.loc[(ev["query_id"] == q) & (ev["grade"] == 3), "product_id"]].to_numpy()] = True
        rec[q] = recall_at(top, rel)
        if exact is not None:
            ex[q] = float(exact[q][top].mean())
    out["recall@50"] = pd.Series(rec)
    if exact is not None:
        out["exact@50"] = pd.Series(ex)
    out["segment"] = data.segment.reindex(out.index).to_numpy() if len(data.segment) else "all"
    return out


# --- statistics ------------------------------------------------------------------------------------

def paired_bootstrap(a: pd.Series, b: pd.Series, n_boot: int = 10000, seed: int = 0) -> dict:
    """Mean per-query difference a - b over queries both define, its 95% paired-bootstrap interval,
    wins / losses and `ltr.data.metrics.paired_test`'s p-values. Why: with ~90 queries a 0.01 gap can be noise."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = (both["a"] - both["b"]).to_numpy()
    if not len(d):
        return {"n_queries": 0}
    boot = np.random.default_rng(seed).choice(d, (n_boot, len(d))).mean(1)
    t = M.paired_test(both["a"], both["b"])
    return {"n_queries": len(d), "mean_diff": round(float(d.mean()), 4),
            "ci95": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
            "wins": int((d > 1e-9).sum()), "losses": int((d < -1e-9).sum()),
            "p_ttest": t["p_ttest"], "p_wilcoxon": t["p_wilcoxon"]}


def summarize(per_query: dict[str, pd.DataFrame]) -> dict:
    """Means per arm (overall and by segment) and the paired comparisons of COMPARISONS, every metric."""
    means = {arm: M.summarize(pq) for arm, pq in per_query.items()}
    comps = {}
    for a, b in COMPARISONS:
        if a in per_query and b in per_query:
            pa, pb = per_query[a], per_query[b]
            comps[f"{a}-{b}"] = {m: paired_bootstrap(pa[m], pb[m]) for m in METRICS if m in pa.columns}
            for seg in sorted(set(pa.get("segment", pd.Series(dtype=str)).dropna())):
                sa, sb = pa[pa["segment"] == seg], pb[pb["segment"] == seg]
                comps[f"{a}-{b}"].update({f"{m}/{seg}": paired_bootstrap(sa[m], sb[m])
                                          for m in METRICS if m in pa.columns})
    return {"means": M.nan_to_none(means), "comparisons": M.nan_to_none(comps)}


# --- the experiment --------------------------------------------------------------------------------

def train_arm(arm: str, sets: dict, val: pd.DataFrame, data: Data, cfg, cache, seed: int, model_dir: Path):
    """Fit one arm and return (tower for scoring, training metadata without the per-step trace)."""
    from features.twotower import TwoTowerConfig, fit_two_tower, load_tower

    pairs = sets["random" if arm == "random" else "mined"]
    arm_cfg = TwoTowerConfig(**{**cfg.model_dump(), "curriculum": arm != "unordered",
                                "early_stopping": cfg.early_stopping and arm != "curriculum_last"})
    meta = fit_two_tower(pairs, data.products, data.queries, model_dir, arm_cfg, seed=seed, val_pairs=val,
                         cache=cache, progress=True)
    tower = load_tower(model_dir, cfg.freeze_layers, cfg.max_length, cache, cfg.cache_frozen, key=cache.key)
    stages = [{k: v for k, v in r.items() if k != "step_levels"} for r in meta["stages"]]
    return tower, {"version": meta["version"], **meta["metrics"], "stages": stages, "val_history": meta["history"]}


def run_fold(data: Data, f: int, fold_of: dict[str, int], mined: pd.DataFrame, a, cfg, cache,
             exact: dict | None, out: Path) -> dict:
    """Every pending arm of one fold; per-query metrics land in out/fold{f}/{arm}.parquet."""
    from features.twotower import load_tower

    fdir = out / f"fold{f}"
    fdir.mkdir(parents=True, exist_ok=True)
    rec_path = fdir / "record.json"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {"fold": f, "arms": {}}
    test_q = sorted(q for q, k in fold_of.items() if k == f)
    todo = [arm for arm in a.arms if not (fdir / f"{arm}.parquet").exists()]
    train_q = np.array(sorted(q for q, k in fold_of.items() if k != f))
    np.random.default_rng(a.seed + f).shuffle(train_q)
    n_val = max(1, int(round(len(train_q) * cfg.val_fraction)))
    val_q, fit_q = set(train_q[:n_val]), set(train_q[n_val:])
    label = sets = val = None
    if any(arm != "zero_shot" for arm in todo):
        t = time.time()
        label = Labeler(data, data.human[data.human["query_id"].isin(set(train_q))])
        sets = {k: label(v) for k, v in training_sets(mined[mined["query_id"].isin(fit_q)], a.budget,
                                                      a.seed + f).items()}
        val = validation_pairs(data, val_q, label)
        rec.update({"n_test_queries": len(test_q), "n_fit_queries": len(fit_q), "n_val_queries": len(val_q),
                    "grader": label.grader_meta, "label_seconds": round(time.time() - t, 1),
                    "labels": {k: {"n": len(v), "by_source": v["label_source"].value_counts().to_dict(),
                                   "by_level": v["level"].value_counts().to_dict(),
                                   "by_grade": v["grade"].value_counts().sort_index().to_dict()}
                               for k, v in sets.items()}})
    for arm in todo:
        t = time.time()
        if arm == "zero_shot":
            tower, info = load_tower(cache.key, cfg.freeze_layers, cfg.max_length, cache, cfg.cache_frozen), {}
        else:
            tower, info = train_arm(arm, sets, val, data, cfg, cache, a.seed + f, fdir / f"model_{arm}")
        t_eval = time.time()
        pq = per_query_metrics(data, tower, test_q, exact, cfg.batch_size_eval)
        pq.to_parquet(fdir / f"{arm}.parquet.tmp")
        os.replace(fdir / f"{arm}.parquet.tmp", fdir / f"{arm}.parquet")  # a crash never leaves a "done" arm
        if not a.keep_models:
            shutil.rmtree(fdir / f"model_{arm}", ignore_errors=True)
        rec["arms"][arm] = {**info, "eval_seconds": round(time.time() - t_eval, 1),
                            "seconds": round(time.time() - t, 1), "heldout": M.nan_to_none(M.summarize(pq))}
        atomic_write(rec_path, json.dumps(rec, indent=2, default=str) + "\n")
        print(f"[{data.name}] fold {f} {arm}: {json.dumps(rec['arms'][arm]['heldout'])} "
              f"({rec['arms'][arm]['seconds']}s)", flush=True)
    return rec


def run_dataset(data: Data, a, cfg, out: Path) -> dict:
    from features.twotower import bottom_cache
    from ltr.data.encoder import default_encoder_path

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mined = mined_pool(data, out, cfg.max_length)
    fold_of = folds(sorted(data.eval["query_id"].unique()), a.folds, a.seed)
    exact = true_exact(data, sorted(fold_of)) if data.name == "world" else None
    cache = bottom_cache(cfg.base_model or default_encoder_path(), cfg.freeze_layers, cfg.max_length)
    records = [run_fold(data, f, fold_of, mined, a, cfg, cache, exact, out)
               for f in (a.only_folds if a.only_folds is not None else range(a.folds))]
    per_query = {}
    for arm in ARMS:
        parts = [pd.read_parquet(p) for f in range(a.folds) if (p := out / f"fold{f}" / f"{arm}.parquet").exists()]
        if parts:
            per_query[arm] = pd.concat(parts)
    n_done = {arm: int(len(pq)) for arm, pq in per_query.items()}
    return {"n_queries": len(fold_of), "n_products": len(data.products), "n_mined": len(mined),
            "mined_levels": mined["level"].value_counts().to_dict(), "queries_scored": n_done,
            "seconds_this_run": round(time.time() - t0, 1), "seconds_recorded": recorded_seconds(records),
            "folds": records, **summarize(per_query)}


def recorded_seconds(records: list[dict]) -> float:
    """Labelling + every arm's training and scoring, summed over the folds' records: the compute the
    figures took across resumed runs (a run's own wall time covers only what it did itself)."""
    return round(sum(r.get("label_seconds", 0) + sum(v.get("seconds", 0) for v in r["arms"].values())
                     for r in records), 1)


# --- report ----------------------------------------------------------------------------------------

def _ci(c: dict | None) -> str:
    if not c or c.get("n_queries", 0) == 0:
        return ""
    return f"{c['mean_diff']:+.3f} ({c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f})"


def markdown(res: dict) -> str:
    """The tables of docs/retrieval.md: means per arm, then each difference with its 95% paired-bootstrap interval."""
    lines = ["| dataset | arm | queries | NDCG@10 ESCI | NDCG@10 exp | Irrelevant@10 | recall@50 | exact@50 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in res["datasets"].items():
        for arm in ARMS:
            m = d["means"].get(arm)
            if m:
                vals = [m.get(k) for k in METRICS]
                lines.append(f"| {name} | {arm} | {int(m['n_queries'])} | "
                             + " | ".join("" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines += ["", "| dataset | difference | ΔNDCG@10 ESCI (95% CI) | ΔNDCG@10 exp | ΔIrrelevant@10 | Δrecall@50 |",
              "|---|---|---|---|---|---|"]
    for name, d in res["datasets"].items():
        for comp, c in d["comparisons"].items():
            lines.append(f"| {name} | {comp} | " + " | ".join(_ci(c.get(m)) for m in METRICS[:4]) + " |")
    segs = [(name, comp, k.split("/")[1], cc) for name, d in res["datasets"].items()
            for comp, cc in d["comparisons"].items() for k in cc
            if k.startswith("ndcg@10/") and comp.endswith("zero_shot")]
    if segs:
        lines += ["", "| dataset | difference | segment | queries | ΔNDCG@10 ESCI (95% CI) | ΔIrrelevant@10 | "
                  "Δrecall@50 |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {comp} | {seg} | {cc[f'ndcg@10/{seg}'].get('n_queries', 0)} | "
                  + " | ".join(_ci(cc.get(f"{m}/{seg}")) for m in ("ndcg@10", "irrelevant@10", "recall@50")) + " |"
                  for n, comp, seg, cc in segs]
    return "\n".join(lines) + "\n"


def merged(res: dict, path: Path) -> dict:
    """`res` plus the datasets an earlier run wrote to `path` and this run did not redo (each dataset keeps
    its own `run` record), so `--datasets esci` after a world run leaves the world's figures in place."""
    if not path.exists():
        return res
    try:
        prev = json.loads(path.read_text())
        old = prev.get("datasets", {})
    except (json.JSONDecodeError, AttributeError):
        return res
    run = {k: prev[k] for k in ("config", "host", "seconds_this_run", "peak_rss_mb") if k in prev}
    kept = {k: {**v, "run": v.get("run", run)} for k, v in old.items() if k not in res["datasets"]}
    return {**res, "datasets": {k: ({**kept, **res["datasets"]})[k]
                                for k in ("esci", "world") if k in kept or k in res["datasets"]}}


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--datasets", nargs="+", default=["esci", "world"], choices=["esci", "world"])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--only-folds", type=int, nargs="*", default=None)
    ap.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    ap.add_argument("--budget", type=int, default=1600, help="labelled training pairs per fold (both arms)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="TwoTowerConfig override key=json")
    a = ap.parse_args(argv)
    from features.twotower import TwoTowerConfig

    torch.set_num_threads(a.threads)
    cfg = TwoTowerConfig(**{**BENCH_DEFAULTS, **parse_set(a.set)})
    out = Path(a.out)
    work = out / "twotower"
    res = {"benchmark": "twotower", **stamp(), "budget_per_fold": a.budget, "folds": a.folds, "seed": a.seed,
           "labeler": "human grade where judged, else the local grader (labels FineTunedGrader) fitted on the "
                      "training folds' human grades; no capable LLM is reachable",
           "config": cfg.model_dump(mode="json"), "datasets": {},
           "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": a.threads, "load_at_start": os.getloadavg()[0]}}
    t0 = time.time()
    for name in a.datasets:
        data = esci_data() if name == "esci" else world_data(work / "world_data", a.world_seed)
        res["datasets"][name] = run_dataset(data, a, cfg, work / name)
        res["datasets"][name]["run"] = {
            "argv": sys.argv[1:] if argv is None else argv, "config": res["config"], "host": res["host"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **stamp()}
    res["seconds_this_run"] = round(time.time() - t0, 1)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out.mkdir(parents=True, exist_ok=True)
    res = merged(res, out / "twotower.json")
    atomic_write(out / "twotower.json", json.dumps(res, indent=2, default=str) + "\n")
    atomic_write(out / "twotower.md", markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
