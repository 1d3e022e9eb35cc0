"""Catalog-wide retrieval and label-free mining (ltr/retrieval/) on the ESCI sample, and the cost of exact search.

Quality: BM25 and the zero-shot bi-encoder retrieve the top-k of the sample's whole catalog for each of its
queries; recall@k of the human-judged Exact (and Exact + Substitute) pairs per retriever and for their union;
then every retrieved pair's difficulty level (mined from ranks only, no labels) beside the human grade of the
pairs that have one: whether the levels sort pairs the way their names say is measured, not assumed.

Cost: wall time and peak RSS of `retrieve` on the sample, and the exact top-k (matrix product + partial sort)
per query on synthetic unit vectors at larger catalog sizes, one BLAS thread: what decides when an ANN index
is needed (docs/retrieval.md).

    python -m bench.bench_retrieval --out DIR [--esci DIR] [--k 50] [--top 10] [--sizes 100000 400000]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.provenance import stamp


def recall(retrieved: pd.DataFrame, judged: pd.DataFrame, min_grade: int) -> dict[str, float]:
    """Share of judged pairs with grade >= min_grade that each retriever (and the union) returned within k."""
    rel = judged[judged["grade"] >= min_grade][["query_id", "product_id"]]
    got = rel.merge(retrieved, on=["query_id", "product_id"], how="left")
    out = {c.removeprefix("rank_"): float(got[c].notna().mean()) for c in ("rank_bm25", "rank_bienc")}
    out["union"] = float(got[["rank_bm25", "rank_bienc"]].notna().any(axis=1).mean())
    out["n_pairs"] = len(rel)
    return out


def levels_vs_grades(mined: pd.DataFrame, judged: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per level: pairs, share judged, and among judged pairs the mean grade, share Exact, share Irrelevant."""
    from ltr.retrieval import LEVELS
    m = mined.merge(judged[["query_id", "product_id", "grade"]], on=["query_id", "product_id"], how="left")
    out = {}
    for lvl in LEVELS:
        g = m[m["level"] == lvl]
        j = g["grade"].dropna()
        out[lvl] = {"pairs": len(g), "judged": len(j), "mean_grade": float(j.mean()) if len(j) else None,
                    "exact_share": float((j == 3).mean()) if len(j) else None,
                    "irrelevant_share": float((j == 0).mean()) if len(j) else None}
    return out


def exact_cost(sizes: list[int], n_queries: int = 200, k: int = 50, dim: int = 384) -> dict[str, float]:
    """ms per query of exact top-k over `n` unit vectors (the retriever's own code path), one thread."""
    from threadpoolctl import threadpool_limits

    from ltr.retrieval.retrievers import _SCORE_BYTES, top_k
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        P = rng.standard_normal((n, dim), dtype=np.float32)
        P /= np.linalg.norm(P, axis=1, keepdims=True)
        Q = P[rng.choice(n, n_queries, replace=False)] + 0.1 * rng.standard_normal((n_queries, dim), dtype=np.float32)
        step = max(1, _SCORE_BYTES // (4 * n))
        with threadpool_limits(1):
            t = time.perf_counter()
            for s in range(0, n_queries, step):
                for row in Q[s:s + step] @ P.T:
                    top_k(row, k)
        out[str(n)] = round(1000 * (time.perf_counter() - t) / n_queries, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    from ltr.data.dataset import Dataset
    from ltr.data.esci import esci_sample_dir
    from ltr.retrieval import MiningConfig, RetrievalConfig, mine, retrieve
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--esci", type=Path, default=None, help="judged dataset dir (default: the shared ESCI sample)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 400_000])
    a = ap.parse_args(argv)
    ds = Dataset.load(a.esci or esci_sample_dir())
    t = time.perf_counter()
    r = retrieve(ds.products, ds.queries, RetrievalConfig(k=a.k), progress=True)
    secs = time.perf_counter() - t
    rss_retrieve = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mined = mine(r, MiningConfig(top=a.top))
    j = ds.judgments
    res = {"dataset": str(ds.root), "products": len(ds.products), "queries": len(ds.queries), "k": a.k, "top": a.top,
           **stamp(), "retrieved_pairs": len(r), "retrieve_seconds": round(secs, 1),
           "peak_rss_mb_after_retrieve": round(rss_retrieve),
           "recall_exact": recall(r, j, 3), "recall_exact_or_substitute": recall(r, j, 2),
           "levels": levels_vs_grades(mined, j),
           "exact_topk_ms_per_query_1_thread": exact_cost(a.sizes, k=a.k) if a.sizes else {},
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "note": "grades are the sample's human judgments; retrieved pairs without one are left out of the "
                   "level statistics (judged counts say how many remain)"}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_retrieval.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
