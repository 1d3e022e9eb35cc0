"""Benchmark: how many human labels, and how good, before the ranker beats what a shop already has.

It reads a finished run with a pilot (`labels.seed_share`, e.g. `configs/homedepot.yaml`) and compares, on the
run's own test queries (the split of the run's seed, never used for any choice), NDCG@10 with ESCI gains and
Irrelevant@10 against the human grades, cold (engagement absent: the catalog's logs are simulated):

    (a) the zero-shot bi-encoder (`bienc_cos`)            (b) BM25 over titles (`lex_bm25_title`)
    (c) the registered champion, as it scores a cold query (reports/test_scores.parquet)
    (d) the champion's recipe with every training query's human grade as its content label (the ceiling)
    (e) the run's cross-encoder recipe fine-tuned on purchase labels of the simulated logs instead, alone
        (the "1.5M purchase labels" arm), beside the grader-label cross-encoder alone (`ce_score`)
    (f) the grader itself as a ranker (its expected grade, from the run's labels)

each with the paired difference to (a) and its 95% bootstrap CI over test queries. Then two curves of (c)'s
recipe: NDCG@10 against the number of training queries the grader learnt from, and against the quality of
the grades it learnt from (the raters' grades with a share replaced by draws from their own distribution,
quadratic kappa against the raters measured on the seed pairs).

What a curve point re-fits, and what it keeps: the grader's small ordinal model on the point's seed, then
the trees on its labels at the run's operating point (reports/champion_config.json; the content-only trees
when the run's cold route chose them, as it scores cold queries). Its features are the
run's without `ce_score`: the cross-encoder was fine-tuned on the run's own labels, and fine-tuning one per
point does not fit a CPU budget. The `trees without ce_score` rows at the run's own pilot give the point the
curves start from, beside the champion with its cross-encoder.

    .venv/bin/python -m bench.bench_label_budget --run-dir runs/homedepot --config configs/homedepot.yaml \
        --out bench/results --png docs/label_budget.png
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


def per_query(test: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """NDCG@10 (ESCI gains) and Irrelevant@10 of each test query."""
    from ltr.data import metrics as M
    q, g = test["query_id"].to_numpy(), test["human_grade"].to_numpy()
    s = np.asarray(scores, dtype="float64")
    return pd.DataFrame({"ndcg": M.ndcg_per_query(q, s, g, K), "irrelevant": M.irrelevant_per_query(q, s, g, K)})


def paired_ci(a: pd.Series, b: pd.Series) -> dict:
    from ltr.data.metrics import paired_bootstrap
    return paired_bootstrap(a, b)


def arm_row(name: str, pq: pd.DataFrame, base: pd.DataFrame) -> dict:
    return {"arm": name, "ndcg@10": float(pq["ndcg"].mean()), "irrelevant@10": float(pq["irrelevant"].mean()),
            "vs_bienc": paired_ci(pq["ndcg"], base["ndcg"])}


def noisy_grades(grades: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A share of the grades replaced by draws from the grades' own distribution: raters who guess."""
    out = grades.copy()
    swap = rng.random(len(out)) < share
    out[swap] = rng.choice(grades, size=int(swap.sum()))
    return out


def grades_at_kappa(grades: np.ndarray, target: float, seed: int) -> tuple[np.ndarray, float]:
    """Noisy grades whose quadratic kappa against `grades` is about `target` (bisection on the share)."""
    from labels.metrics import quadratic_kappa
    if target >= 1:
        return grades.copy(), 1.0
    lo, hi = 0.0, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        k = quadratic_kappa(grades, noisy_grades(grades, mid, np.random.default_rng(seed)))
        lo, hi = (mid, hi) if k > target else (lo, mid)
    out = noisy_grades(grades, (lo + hi) / 2, np.random.default_rng(seed))
    return out, float(quadratic_kappa(grades, out))


class Study:
    """The run's frame and split, the grader's inputs for every pair, and the recipe refit on new labels."""

    def __init__(self, run_dir: Path, config: Path) -> None:
        from labels.backends.grader import FineTunedGrader
        from ltr.data.config import load_config
        from ltr.data.dataset import Dataset
        from ltr.pipeline import run_test_queries
        from ltr.rankers import split_frame
        from ltr.run_config import RunConfig
        from ltr.train_config import TrainConfig
        self.cfg = load_config(config, RunConfig)
        summary = json.loads((run_dir / "reports" / "train_metrics.json").read_text())  # written after training
        self.ds = Dataset.load(summary["dataset"])
        frame = pd.read_parquet(run_dir / "training_frame.parquet")
        human = self.ds.judgments[["query_id", "product_id", "grade"]].rename(columns={"grade": "human_grade"})
        frame = frame.merge(human, on=["query_id", "product_id"], how="left")
        self.train, self.test = split_frame(frame, "query_id", [1 - self.cfg.train.test_fraction,
                                                                self.cfg.train.test_fraction], self.cfg.seed)
        if set(self.test["query_id"]) != run_test_queries(self.cfg, self.ds):
            raise SystemExit("the frame's test split is not the run's. Fix: pass the run's own --config.")
        self.champion_cfg = TrainConfig.model_validate_json((run_dir / "reports" / "champion_config.json").read_text())
        # how the champion scores a cold query: its trees, or (the route's choice) its content-only trees
        route = json.loads((run_dir / "reports" / "summary.json").read_text()).get("cold_start", {}).get("cold_route")
        self.route = (route or {}).get("choice", "champion")
        if self.route == "content_only":
            from ltr.train import content_only_config
            self.champion_cfg = content_only_config(self.champion_cfg)
        self.scores = pd.read_parquet(run_dir / "reports" / "test_scores.parquet")
        self.labels = pd.read_parquet(run_dir / "labels" / "labels.parquet", columns=["query_id", "product_id",
                                                                                     "score"])
        self.seed_queries = set(json.loads((run_dir / "labels" / "grader" / "seed_queries.json").read_text()))
        self.grader = FineTunedGrader(config=self.cfg.labels.grader)
        self._x: np.ndarray | None = None

    def grader_inputs(self) -> np.ndarray:
        """The grader's input matrix for every training pair (computed once; the slow part)."""
        if self._x is None:
            qtext = dict(zip(self.ds.queries["query_id"], self.ds.queries["query"]))
            prods = self.ds.products.set_index("product_id", drop=False)
            recs = prods.loc[self.train["product_id"]].to_dict("records")
            self._x = self.grader.pair_features([qtext[q] for q in self.train["query_id"]], recs, progress=True)
        return self._x

    def grader_scores(self, seed: set[str], grades: np.ndarray | None = None) -> np.ndarray:
        """The grader's score (expected grade / 3) of every training pair, fitted on the `seed` queries'
        grades (the raters', or `grades` aligned with the training rows)."""
        from labels.backends.grader_model import N_GRADES, OrdinalLogit
        x = self.grader_inputs()
        g = self.train["human_grade"].to_numpy() if grades is None else grades
        rows = self.train["query_id"].isin(seed).to_numpy() & np.isfinite(g)
        gc = self.cfg.labels.grader
        model = OrdinalLogit(gc.l2, gc.class_weight_power).fit(x[rows], g[rows].astype(int))
        return model.predict_proba(x) @ np.arange(N_GRADES) / (N_GRADES - 1)

    def trees(self, content: np.ndarray, with_ce: bool) -> np.ndarray:
        """Cold scores of the test pairs by the champion's recipe trained on `content` labels: the trees that
        score its cold queries (the content-only ones where its cold route chose them; a route through a
        blend or a single feature is not refit here, the trees stand in for it)."""
        from ltr.train import fit_ranker, mask_engagement
        cfg = self.champion_cfg
        if not with_ce:
            cfg = cfg.model_copy(update={"exclude_feature_prefixes": [*cfg.exclude_feature_prefixes, "ce_"]})
        model = fit_ranker(self.train.assign(content_score=content), cfg)
        return np.asarray(model.predict(mask_engagement(self.test), missing="nan"), dtype="float64")

    def draw_seed(self, n: int, seed: int) -> set[str]:
        qs = np.array(sorted(self.train["query_id"].unique()))
        return set(np.random.default_rng(seed).choice(qs, size=min(n, len(qs)), replace=False).tolist())


def engagement_ce(st: Study, run_dir: Path) -> np.ndarray:
    """Arm (e): the run's cross-encoder recipe fine-tuned on purchase labels (the smoothed purchase rate of
    the simulated logs, `ltr.pipeline.purchase_targets`) of the training queries, scoring the test pairs
    alone. Fitted once into RUN/bench_label_budget/ce_engagement and reused."""
    from features.crossencoder import CrossEncoderScorer, fine_tune_cross_encoder, score_pairs
    from ltr.pipeline import purchase_targets
    mdir = run_dir / "bench_label_budget" / "ce_engagement"
    if not (mdir / "ltr_cross_encoder.json").exists():
        cutoff = pd.Timestamp(json.loads((run_dir / "reports" / "train_metrics.json").read_text())["cutoff"])
        targets = purchase_targets(st.ds, cutoff)
        targets = targets[targets["query_id"].isin(set(st.train["query_id"]))].reset_index(drop=True)
        print(f"  (e) fine-tuning the cross-encoder on {len(targets)} purchase-labelled training pairs", flush=True)
        fine_tune_cross_encoder(targets, st.ds.products, st.ds.queries, mdir, st.cfg.cross_encoder, seed=st.cfg.seed)
    scored = score_pairs(st.test[["query_id", "product_id"]], st.ds.products, st.ds.queries,
                         CrossEncoderScorer(mdir), progress=True)
    return st.test[["query_id", "product_id"]].merge(scored, on=["query_id", "product_id"], how="left")[
        "ce_score"].to_numpy()


def arms(st: Study, run_dir: Path | None = None) -> list[dict]:
    test = st.test
    sc = test[["query_id", "product_id"]].merge(st.scores, on=["query_id", "product_id"], how="left")
    lab = test[["query_id", "product_id"]].merge(st.labels, on=["query_id", "product_id"], how="left")
    base = per_query(test, test["bienc_cos"].fillna(-1).to_numpy())
    human = st.train["human_grade"].to_numpy() / 3
    rows = [("(a) zero-shot bi-encoder", test["bienc_cos"].fillna(-1).to_numpy()),
            ("(b) BM25 (title)", test["lex_bm25_title"].fillna(0).to_numpy()),
            ("(c) champion, grader labels (as registered, cold)", sc["champion_cold"].to_numpy()),
            ("(c) trees without ce_score, grader labels", st.trees(st.train["content_score"].to_numpy(), False)),
            ("(d) champion recipe, all human labels", st.trees(np.nan_to_num(human, nan=0.5), True)),
            ("(d) trees without ce_score, all human labels", st.trees(np.nan_to_num(human, nan=0.5), False)),
            ("(f) the grader as a ranker", lab["score"].fillna(0).to_numpy()),
            ("cross-encoder on grader labels alone (ce_score)", test["ce_score"].fillna(-1e9).to_numpy())]
    if run_dir is not None:
        rows.append(("(e) cross-encoder on simulated purchase labels alone", engagement_ce(st, run_dir)))
    return [arm_row(name, per_query(test, s), base) for name, s in rows]


def curves(st: Study, sizes: list[int], kappas: list[float], seed: int) -> dict:
    base = per_query(st.test, st.test["bienc_cos"].fillna(-1).to_numpy())
    out: dict = {"by_seed_queries": [], "by_label_quality": []}
    for n in sizes:
        t = time.time()
        pq = per_query(st.test, st.trees(st.grader_scores(st.draw_seed(n, seed)), False))
        out["by_seed_queries"].append({"seed_queries": n, **arm_row(f"{n} queries", pq, base),
                                       "seconds": round(time.time() - t, 1)})
        print(f"  seed queries {n}: ndcg@10 {pq['ndcg'].mean():.4f}", flush=True)
    pilot = st.seed_queries
    g = st.train["human_grade"].to_numpy()
    seed_rows = st.train["query_id"].isin(pilot).to_numpy() & np.isfinite(g)
    for kappa in kappas:
        noisy = g.copy()
        noisy[seed_rows], measured = grades_at_kappa(g[seed_rows].astype(int), kappa, seed)
        pq = per_query(st.test, st.trees(st.grader_scores(pilot, noisy), False))
        out["by_label_quality"].append({"target_kappa": kappa, "measured_kappa": round(measured, 3),
                                        "seed_queries": len(pilot), **arm_row(f"kappa {kappa}", pq, base)})
        print(f"  kappa {measured:.2f}: ndcg@10 {pq['ndcg'].mean():.4f}", flush=True)
    return out


def plot(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    a = next(r for r in result["arms"] if r["arm"].startswith("(a)"))["ndcg@10"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, x, xlabel in ((axes[0], "by_seed_queries", "seed_queries", "human-labelled training queries"),
                               (axes[1], "by_label_quality", "measured_kappa", "quadratic kappa vs the raters")):
        pts = result["curves"][key]
        xs = [p[x] for p in pts]
        ys = [p["ndcg@10"] for p in pts]
        lo = [a + p["vs_bienc"]["ci95"][0] for p in pts]
        hi = [a + p["vs_bienc"]["ci95"][1] for p in pts]
        ax.fill_between(xs, lo, hi, alpha=0.2, label="95% CI of the gap, around (a)")
        ax.plot(xs, ys, "o-", label="trees on grader labels (no ce_score)")
        ax.axhline(a, color="k", ls="--", lw=1, label="(a) zero-shot bi-encoder")
        ax.set_xlabel(xlabel)
        if key == "by_seed_queries":
            ax.set_xscale("log")
    axes[0].set_ylabel("NDCG@10 (ESCI gains), test queries")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['dataset']}: {result['n_test_queries']} test queries, commit {result['commit']}",
                 fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--png", type=Path, default=Path("docs/label_budget.png"))
    ap.add_argument("--sizes", default="50,160,500,2000,8000")
    ap.add_argument("--kappas", default="0.3,0.5,0.7,1.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-engagement-ce", action="store_true",
                    help="skip arm (e), the cross-encoder fine-tuned on purchase labels (minutes on a CPU)")
    a = ap.parse_args(argv)
    t0 = time.time()
    st = Study(a.run_dir, a.config)
    result = {"bench": "label_budget", **stamp(),
              "dataset": str(st.ds.root), "run_dir": str(a.run_dir),
              "n_test_queries": int(st.test["query_id"].nunique()),
              "n_train_queries": int(st.train["query_id"].nunique()), "pilot_queries": len(st.seed_queries),
              "split_seed": st.cfg.seed, "cold_route": st.route,
              "metric": "NDCG@10, ESCI gains, cold (engagement absent)",
              "engagement": "simulated (no logs come with the catalog)"}
    result["arms"] = arms(st, None if a.no_engagement_ce else a.run_dir)
    for r in result["arms"]:
        print(f"{r['arm']:<52} ndcg@10 {r['ndcg@10']:.4f}  irr@10 {r['irrelevant@10']:.4f}  vs (a) "
              f"{r['vs_bienc']['diff']:+.4f} [{r['vs_bienc']['ci95'][0]:+.4f}, {r['vs_bienc']['ci95'][1]:+.4f}]",
              flush=True)
    result["curves"] = curves(st, [int(x) for x in a.sizes.split(",")], [float(x) for x in a.kappas.split(",")],
                              a.seed)
    result["seconds"] = round(time.time() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "label_budget.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, a.png)
    print(f"wrote {a.out / 'label_budget.json'} and {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
