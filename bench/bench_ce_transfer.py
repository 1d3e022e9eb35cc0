"""Transfer check: cross-encoders fine-tuned elsewhere (e.g. on the built-in world's labels by `make run`)
scored on all ESCI-sample queries, none of which they saw, against the zero-shot bi-encoder.

    .venv/bin/python -m bench.bench_ce_transfer --out DIR [--models CE_DIR ...]

Writes DIR/ce_transfer.json: NDCG@10 (ESCI and exponential gains) and Irrelevant@10 for each model and for
the bi-encoder cosine on title + brand and on each model's own product text, same pairs, same metric code
as bench_ce_quality.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.bench_ce_quality import esci_dir, load_esci, metrics
from ltr.data.provenance import stamp


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="*", default=None,
                    help="cross-encoder dirs (default: the main job's runs/default/cross_encoder/llm_fold*)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = a.models or sorted(str(p) for p in Path("runs/default/cross_encoder").glob("llm_fold*"))
    if not models:
        res = {"benchmark": "ce_transfer", **stamp(),
               "skipped": "no cross-encoder dirs: pass --models or run `make run` first"}
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "ce_transfer.json").write_text(json.dumps(res, indent=2) + "\n")
        print(res["skipped"])
        return res

    from features.biencoder import BiEncoder
    from features.crossencoder import CrossEncoderScorer
    from features.text import pair_texts

    products, judg, queries = load_esci(esci_dir())
    judg = judg.reset_index(drop=True)
    qs, ts = pair_texts(judg, products, queries, fields=("title", "brand"))
    res: dict = {"benchmark": "ce_transfer", **stamp(), "n_queries": int(judg["query_id"].nunique()),
                 "n_pairs": len(judg),
                 "bienc_cos_title_brand": metrics(judg, BiEncoder(max_length=128).cosine(qs, ts)), "models": {}}
    for d in models:
        sc = CrossEncoderScorer(d)
        text_kw = sc.meta.get("text", {})
        mq, mt = pair_texts(judg, products, queries, **text_kw)
        res["models"][d] = {"version": sc.version, "cross_encoder": metrics(judg, sc.score(mq, mt)),
                            "bienc_cos_same_text": metrics(judg, BiEncoder(max_length=sc.max_length).cosine(mq, mt))}
        print(d, json.dumps(res["models"][d]), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "ce_transfer.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
