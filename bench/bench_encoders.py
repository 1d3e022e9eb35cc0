"""Benchmark: encoder throughput for capacity planning (docs/scale.md).

Bi-encoder product texts per second and cross-encoder pairs per second on the ESCI sample's real text,
2 torch threads, wall and CPU time (per CPU-second is the figure to scale by cores, and the one to trust
on a machine shared with other jobs). The cross-encoder is a MiniLM segment-cosine model fine-tuned for
one short epoch on a few judged pairs: speed does not depend on how well it ranks.

    .venv/bin/python -m bench.bench_encoders --out bench/results [--pairs 384]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from ltr.data.provenance import stamp


def _timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=384)
    ap.add_argument("--esci", default="../shared/data/esci")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd
    import torch

    from features.biencoder import FEATURE_MAX_LENGTH, BiEncoder
    from features.crossencoder import CrossEncoderConfig, CrossEncoderScorer, fine_tune_cross_encoder
    from features.text import pair_texts
    from ltr.data.schemas import query_id

    torch.set_num_threads(2)
    prods = pd.read_parquet(Path(a.esci) / "products.parquet")
    jud = pd.read_parquet(Path(a.esci) / "judgments.parquet").head(a.pairs)
    jud["query_id"] = jud["query"].map(query_id)
    queries = jud[["query_id", "query"]].drop_duplicates("query_id")
    qs, ts = pair_texts(jud, prods, queries)
    texts = list(dict.fromkeys(ts))
    res = {"benchmark": "bench_encoders", **stamp(), "pairs": len(qs), "distinct_product_texts": len(texts),
           "torch_threads": 2, "load_avg_1m_start": os.getloadavg()[0]}
    BiEncoder(max_length=FEATURE_MAX_LENGTH).encode(texts[:32])  # weights into the page cache
    be = BiEncoder(max_length=FEATURE_MAX_LENGTH)
    wall, cpu = _timed(lambda: be.encode(texts))
    res["bienc"] = {"max_length": FEATURE_MAX_LENGTH, "texts_per_s": round(len(texts) / wall, 1),
                    "texts_per_cpu_s": round(len(texts) / cpu, 2)}
    with tempfile.TemporaryDirectory() as d:
        train = jud.head(64).assign(score=jud.head(64)["grade"] / 3)
        fine_tune_cross_encoder(train[["query_id", "product_id", "score"]], prods, queries, Path(d) / "ce",
                                CrossEncoderConfig(max_length=64, epochs=1, freeze_layers=5, val_fraction=0.25),
                                seed=0, progress=False)
        ce = CrossEncoderScorer(Path(d) / "ce")
        ce.score(qs[:32], ts[:32])
        wall, cpu = _timed(lambda: ce.score(qs, ts))
    res["cross_encoder"] = {"max_length": ce.max_length, "backend": "torch fp32",
                            "pairs_per_s": round(len(qs) / wall, 1), "pairs_per_cpu_s": round(len(qs) / cpu, 2)}
    res["peak_rss_mb"] = round(_peak_rss_mb())
    res["load_avg_1m_end"] = os.getloadavg()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_encoders.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
