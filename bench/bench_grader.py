"""Held-out comparison on the ESCI sample: fine-tuned local grader vs zero-shot bi-encoder grader.

    .venv/bin/python -m bench.bench_grader --out DIR [--test-frac 0.3] [--seeds 0 1 2 3 4] [--l2 50]

Query-grouped seeded split (no query appears on both sides). Both graders are fitted on the same
training queries (the zero-shot one only learns its cut points there) and scored on the same held-out
pairs: quadratic-weighted kappa on hard grades and Spearman on the continuous score.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ltr.data.esci import esci_sample_dir as esci_dir
from ltr.data.provenance import stamp


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
    test_q = set(rng.choice(qs, size=max(1, round(test_frac * len(qs))), replace=False))
    m = df["query"].isin(test_q)
    return df[~m].reset_index(drop=True), df[m].reset_index(drop=True)


def _one_split(df: pd.DataFrame, test_frac: float, seed: int, save_dir: Path | None, cfg_kw: dict) -> dict:
    from labels.backends.grader import (
        FineTunedGrader,
        GraderConfig,
        ZeroShotBiEncoderGrader,
    )
    from labels.metrics import apply_thresholds, quadratic_kappa, spearman

    tr, te = query_split(df, test_frac, seed)
    prods_tr, prods_te = tr.to_dict("records"), te.to_dict("records")
    yte = te["grade"].to_numpy()
    res: dict = {
        "split_seed": seed,
        "n_train_pairs": len(tr),
        "n_test_pairs": len(te),
        "n_train_queries": tr["query"].nunique(),
        "n_test_queries": te["query"].nunique(),
    }
    t0 = time.perf_counter()
    zs = ZeroShotBiEncoderGrader().fit(tr["query"].tolist(), prods_tr, tr["grade"].to_numpy())
    cos = zs.cosine(te["query"].tolist(), prods_te)
    gz = zs.predict_grade(cos)
    res["zero_shot"] = {
        "kappa": quadratic_kappa(yte, gz),
        "spearman": spearman(cos, yte),
        "accuracy": float((gz == yte).mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    t0 = time.perf_counter()
    cfg = GraderConfig(seed=seed, progress=False, **cfg_kw)
    g = FineTunedGrader(config=cfg).fit(tr["query"].tolist(), prods_tr, tr["grade"].to_numpy())
    t_fit = time.perf_counter() - t0
    pr = g.predict_proba(te["query"].tolist(), prods_te)
    eg = pr @ np.arange(4)
    gg = g.predict_grade(pr)
    res["fine_tuned"] = {
        "kappa": quadratic_kappa(yte, gg),
        "spearman": spearman(eg, yte),
        "accuracy": float((gg == yte).mean()),
        "kappa_argmax": quadratic_kappa(yte, pr.argmax(1)),
        "kappa_round_expected": quadratic_kappa(yte, apply_thresholds(eg, [0.5, 1.5, 2.5])),
        "seconds_fit": round(t_fit, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "version": g.version,
        "meta": g.meta,
    }
    res["fine_tuned_beats_zero_shot"] = bool(
        res["fine_tuned"]["kappa"] > res["zero_shot"]["kappa"]
        and res["fine_tuned"]["spearman"] > res["zero_shot"]["spearman"]
    )
    if save_dir:
        g.save(save_dir / f"seed{seed}")
    return res


def run(
    out: Path,
    test_frac: float = 0.3,
    seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4),
    save_dir: Path | None = None,
    **cfg_kw,
) -> dict:
    """Compare both graders on each seeded query split; write DIR/bench_grader.json with per-split figures
    and their means. Embeddings are memoised across splits, so extra splits cost little."""
    from tqdm.auto import tqdm

    from labels.backends.grader import GraderConfig

    df = load_esci()
    t0 = time.perf_counter()
    splits = [_one_split(df, test_frac, s, save_dir, cfg_kw) for s in tqdm(list(seeds), desc="splits")]
    mean = {
        k: {m: float(np.mean([r[k][m] for r in splits])) for m in ("kappa", "spearman", "accuracy")}
        for k in ("zero_shot", "fine_tuned")
    }
    res = {
        "benchmark": "grader_vs_zero_shot_heldout_esci",
        **stamp(),
        "test_frac": test_frac,
        "seeds": list(seeds),
        "config": GraderConfig(progress=False, **cfg_kw).fingerprint_dict(),
        "mean": mean,
        "fine_tuned_beats_zero_shot_on_mean": bool(
            mean["fine_tuned"]["kappa"] > mean["zero_shot"]["kappa"]
            and mean["fine_tuned"]["spearman"] > mean["zero_shot"]["spearman"]
        ),
        "splits_won": int(sum(r["fine_tuned_beats_zero_shot"] for r in splits)),
        "splits": splits,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_grader.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test-frac", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="query-split seeds")
    ap.add_argument("--l2", type=float, default=None)
    ap.add_argument("--features", nargs="+", default=None, help="grader features (see GraderConfig)")
    ap.add_argument("--save", type=Path, default=None, help="save each split's fitted grader under here")
    a = ap.parse_args()
    kw = {
        k: v
        for k, v in (("l2", a.l2), ("features", tuple(a.features) if a.features else None))
        if v is not None
    }
    torch.set_num_threads(1)
    res = run(a.out, a.test_frac, a.seeds, a.save, **kw)
    for r in res["splits"]:
        print(
            f"split {r['split_seed']}: zero-shot kappa={r['zero_shot']['kappa']:.3f} "
            f"spearman={r['zero_shot']['spearman']:.3f} | fine-tuned kappa={r['fine_tuned']['kappa']:.3f} "
            f"spearman={r['fine_tuned']['spearman']:.3f}"
        )
    for k in ("zero_shot", "fine_tuned"):
        m = res["mean"][k]
        print(f"mean {k:10s} kappa={m['kappa']:.3f} spearman={m['spearman']:.3f} acc={m['accuracy']:.3f}")
    print(
        f"beats zero-shot on the mean: {res['fine_tuned_beats_zero_shot_on_mean']}; "
        f"splits won {res['splits_won']}/{len(res['splits'])}"
    )


if __name__ == "__main__":
    main()
