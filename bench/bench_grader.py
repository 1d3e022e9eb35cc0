"""Held-out comparison on the ESCI sample: fine-tuned local grader vs zero-shot bi-encoder grader.

    .venv/bin/python -m bench.bench_grader --out DIR [--test-frac 0.3] [--seed 0] [--epochs 4]

Query-grouped seeded split (no query appears on both sides). Both graders are fitted on the same
training queries (the zero-shot one only learns its cut points there) and scored on the same held-out
pairs: quadratic-weighted kappa on hard grades and Spearman on the continuous score.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd


def esci_dir() -> Path:
    env = os.environ.get("LTR_ESCI_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "esci"


def load_esci(root: Path | None = None) -> pd.DataFrame:
    root = root or esci_dir()
    if not (root / "judgments.parquet").exists():
        raise FileNotFoundError(f"ESCI sample not found at {root}. Fix: set LTR_ESCI_DIR.")
    j = pd.read_parquet(root / "judgments.parquet")
    p = pd.read_parquet(root / "products.parquet")
    return j.merge(p, on="product_id", how="inner")


def query_split(df: pd.DataFrame, test_frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    qs = np.array(sorted(df["query"].unique()))
    rng = np.random.default_rng(seed)
    test_q = set(rng.choice(qs, size=max(1, int(round(test_frac * len(qs)))), replace=False))
    m = df["query"].isin(test_q)
    return df[~m].reset_index(drop=True), df[m].reset_index(drop=True)


def run(out: Path, test_frac: float = 0.3, seed: int = 0, save_dir: Path | None = None, **cfg_kw) -> dict:
    import torch

    from labels.backends.grader import FineTunedGrader, GraderConfig, ZeroShotBiEncoderGrader
    from labels.metrics import apply_thresholds, quadratic_kappa, spearman
    torch.set_num_threads(2)
    df = load_esci()
    tr, te = query_split(df, test_frac, seed)
    prods_tr = tr.to_dict("records")
    prods_te = te.to_dict("records")
    res: dict = {"n_train_pairs": len(tr), "n_test_pairs": len(te), "n_train_queries": tr["query"].nunique(),
                 "n_test_queries": te["query"].nunique(), "seed": seed, "test_frac": test_frac}
    t0 = time.perf_counter()
    zs = ZeroShotBiEncoderGrader().fit(tr["query"].tolist(), prods_tr, tr["grade"].to_numpy())
    cos = zs.cosine(te["query"].tolist(), prods_te)
    gz = zs.predict_grade(cos)
    res["zero_shot"] = {"kappa": quadratic_kappa(te["grade"], gz), "spearman": spearman(cos, te["grade"]),
                        "accuracy": float((gz == te["grade"].to_numpy()).mean()),
                        "seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    cfg = GraderConfig(seed=seed, **cfg_kw)
    g = FineTunedGrader(config=cfg).fit(tr["query"].tolist(), prods_tr, tr["grade"].to_numpy())
    t_fit = time.perf_counter() - t0
    pr = g.predict_proba(te["query"].tolist(), prods_te)
    eg = pr @ np.arange(4)
    gg = g.predict_grade(pr)
    res["fine_tuned"] = {"kappa": quadratic_kappa(te["grade"], gg), "spearman": spearman(eg, te["grade"]),
                         "accuracy": float((gg == te["grade"].to_numpy()).mean()),
                         "kappa_argmax": quadratic_kappa(te["grade"], pr.argmax(1)),
                         "kappa_round_expected": quadratic_kappa(te["grade"], apply_thresholds(eg, [.5, 1.5, 2.5])),
                         "seconds_fit": round(t_fit, 1), "seconds_total": round(time.perf_counter() - t0, 1),
                         "config": asdict(cfg), "meta": g.meta}
    res["fine_tuned_beats_zero_shot"] = bool(res["fine_tuned"]["kappa"] > res["zero_shot"]["kappa"]
                                             and res["fine_tuned"]["spearman"] > res["zero_shot"]["spearman"])
    if save_dir:
        g.save(save_dir)
        res["saved_to"] = str(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_grader.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test-frac", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-unfrozen", type=int, default=None)
    ap.add_argument("--save", type=Path, default=None, help="save the fitted grader here")
    a = ap.parse_args()
    kw = {k: v for k, v in (("epochs", a.epochs), ("n_unfrozen", a.n_unfrozen)) if v is not None}
    res = run(a.out, a.test_frac, a.seed, a.save, **kw)
    for k in ("zero_shot", "fine_tuned"):
        print(f"{k:10s} kappa={res[k]['kappa']:.3f} spearman={res[k]['spearman']:.3f} acc={res[k]['accuracy']:.3f}")
    print(f"fine-tuned fit {res['fine_tuned']['seconds_fit']}s; beats zero-shot: {res['fine_tuned_beats_zero_shot']}")


if __name__ == "__main__":
    main()
