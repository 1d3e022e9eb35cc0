"""Held-out quality of the fine-tuned cross-encoder vs the zero-shot bi-encoder, BM25 and random.

Query-grouped K-fold on the real ESCI sample (`../shared/data/esci/`, or $LTR_ESCI_DIR): for each fold
the cross-encoder is fine-tuned on human grades / 3 of the *other* folds' queries (with its own
query-grouped early-stopping split) and scores the fold's queries, so every query is scored
out-of-fold. NDCG@10 with ESCI gains (E=1, S=0.1, C=0.01, I=0) and exponential gains (2^g - 1).

    .venv/bin/python -m bench.bench_ce_quality --out DIR [--folds 3] [--set epochs=2 --set loss=listwise]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

from ltr.data.esci import esci_sample_dir as esci_dir

ESCI_GAINS = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}


def load_esci(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from ltr.data.dataset import derive_queries, with_query_ids

    if not (root / "judgments.parquet").exists():
        sys.exit(f"ESCI sample not found at {root}. Fix: set LTR_ESCI_DIR to the folder holding "
                 "products.parquet and judgments.parquet.")
    products = pd.read_parquet(root / "products.parquet")
    judg = with_query_ids(pd.read_parquet(root / "judgments.parquet"))
    return products, judg, derive_queries(judg)


def bm25_scores(judg: pd.DataFrame, products: pd.DataFrame) -> np.ndarray:
    """BM25 (bm25s) of the query over title + brand + bullet points, within each query's candidates."""
    import bm25s

    text = products.set_index("product_id")
    doc = (text["title"].fillna("") + " " + text["brand"].fillna("") + " " + text["bullet_points"].fillna(""))
    out = np.zeros(len(judg))
    for _, g in judg.groupby("query_id", sort=False):
        corpus = [doc[p] for p in g["product_id"]]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        q = bm25s.tokenize([g["query"].iloc[0]], stopwords="en", show_progress=False)
        docs, scores = retriever.retrieve(q, k=len(corpus), show_progress=False)
        s = np.zeros(len(corpus))
        s[docs[0]] = scores[0]
        out[g.index.to_numpy()] = s
    return out


def metrics(judg: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    from features.crossencoder import ndcg_at_k

    q, g = judg["query_id"].to_numpy(), judg["grade"].to_numpy()
    top10_irrel = []
    for _, grp in pd.DataFrame({"q": q, "g": g, "s": scores}).groupby("q"):
        top = grp.sort_values("s", ascending=False, kind="stable").head(10)
        top10_irrel.append(float((top["g"] == 0).mean()))
    return {"ndcg10_esci": round(ndcg_at_k(q, [ESCI_GAINS[x] for x in g], scores, 10), 4),
            "ndcg10_exp": round(ndcg_at_k(q, 2.0 ** g - 1, scores, 10), 4),
            "irrelevant_at10": round(float(np.mean(top10_irrel)), 4)}


def untrained_scores(pairs: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, cfg) -> np.ndarray:
    """Raw logits of the model fine-tuning starts from (for the segment-cosine head: ~ bi-encoder)."""
    from features.crossencoder import _collate, _length_batches, _tokenize_pairs, load_base_cross_encoder
    from features.text import pair_texts

    model, tok = load_base_cross_encoder(cfg.base_model, cfg.max_length, cfg)
    model.eval()
    qs, ts = pair_texts(pairs, products, queries, **cfg.text_kwargs())
    enc = _tokenize_pairs(tok, qs, ts, cfg.max_length)
    out = np.empty(len(qs), np.float32)
    with torch.inference_mode():
        for b in _length_batches([len(x) for x in enc["input_ids"]], 64):
            out[b] = model(**_collate(enc, b, int(tok.pad_token_id or 0))).logits[:, 0].float().numpy()
    return out


def parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--only-folds", type=int, nargs="*", default=None, help="run a subset (for quick checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="CrossEncoderConfig override key=json")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--baselines-from", default=None, help="reuse bi-encoder scores saved by an earlier run")
    ap.add_argument("--no-init-score", action="store_true",
                    help="skip scoring each held-out fold with the untrained model (the starting point)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from features.biencoder import BiEncoder
    from features.crossencoder import CrossEncoderConfig, CrossEncoderScorer, fine_tune_cross_encoder, score_pairs
    from features.text import pair_texts

    products, judg, queries = load_esci(esci_dir())
    judg = judg.reset_index(drop=True)
    cfg = CrossEncoderConfig(**{"val_fraction": 0.15, "num_threads": a.threads, **parse_set(a.set)})
    res: dict = {"benchmark": "ce_quality", "data": str(esci_dir()), "n_queries": int(judg["query_id"].nunique()),
                 "n_pairs": len(judg), "folds": a.folds, "seed": a.seed, "config": cfg.model_dump(mode="json"),
                 "host": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpus": os.cpu_count(), "threads": a.threads}, "rankers": {}}

    t = time.time()
    cache = Path(a.baselines_from) / "bienc_scores.parquet" if a.baselines_from else None
    if cache is not None and cache.exists():
        bs = pd.read_parquet(cache)
        bi_tb, bi_ce_text = bs["title_brand"].to_numpy(), bs["ce_text"].to_numpy()
    else:
        be = BiEncoder(max_length=128)
        qs, ts = pair_texts(judg, products, queries, fields=("title", "brand"))
        bi_tb = be.cosine(qs, ts, progress=True)
        qs2, ts2 = pair_texts(judg, products, queries, **cfg.text_kwargs())
        bi_ce_text = BiEncoder(max_length=cfg.max_length).cosine(qs2, ts2, progress=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"query_id": judg["query_id"], "product_id": judg["product_id"], "title_brand": bi_tb,
                  "ce_text": bi_ce_text}).to_parquet(Path(a.out) / "bienc_scores.parquet")
    res["rankers"]["bienc_cos_title_brand"] = metrics(judg, bi_tb)
    res["rankers"]["bienc_cos_ce_text"] = metrics(judg, bi_ce_text)
    res["bienc_seconds"] = round(time.time() - t, 1)
    res["rankers"]["bm25_title_brand_bullets"] = metrics(judg, bm25_scores(judg, products))
    rnd = [metrics(judg, np.random.default_rng(s).random(len(judg))) for s in range(20)]
    res["rankers"]["random_mean20"] = {k: round(float(np.mean([r[k] for r in rnd])), 4) for k in rnd[0]}

    uq = np.array(sorted(judg["query_id"].unique()))
    np.random.default_rng(a.seed).shuffle(uq)
    fold_of = {q: i % a.folds for i, q in enumerate(uq)}
    fold = judg["query_id"].map(fold_of).to_numpy()
    ce = np.full(len(judg), np.nan)
    res["fold_runs"] = []
    tmp = Path(tempfile.mkdtemp(prefix="ce_quality_"))
    for f in (a.only_folds if a.only_folds is not None else range(a.folds)):
        tr, te = judg[fold != f], judg[fold == f]
        pairs = tr[["query_id", "product_id"]].assign(score=tr["grade"] / 3.0)
        init = None
        if not a.no_init_score:  # held-out NDCG of the untrained starting point (ranking only)
            init = untrained_scores(te, products, queries, cfg)
        t = time.time()
        meta = fine_tune_cross_encoder(pairs, products, queries, tmp / f"fold{f}", cfg, seed=a.seed + f)
        scorer = CrossEncoderScorer(tmp / f"fold{f}")
        ce[te.index.to_numpy()] = score_pairs(te, products, queries, scorer)["ce_score"].to_numpy()
        run = {"fold": f, "seconds": round(time.time() - t, 1), **meta["metrics"],
               "heldout": metrics(te, ce[te.index.to_numpy()]),
               "heldout_bienc": metrics(te, bi_tb[te.index.to_numpy()]),
               "heldout_bienc_ce_text": metrics(te, bi_ce_text[te.index.to_numpy()])}
        if init is not None:
            run["heldout_untrained"] = metrics(te, init)
        res["fold_runs"].append(run)
        print(json.dumps(run), flush=True)
    done = ~np.isnan(ce)
    res["scored_queries"] = int(judg.loc[done, "query_id"].nunique())
    sub = judg[done]
    res["rankers"]["cross_encoder_finetuned_oof"] = metrics(sub, ce[done])
    if not done.all():  # partial run: compare on the same queries
        res["rankers_on_scored_subset"] = {"bienc_cos_title_brand": metrics(sub, bi_tb[done]),
                                           "bienc_cos_ce_text": metrics(sub, bi_ce_text[done])}
    if not a.keep_models:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        res["models_dir"] = str(tmp)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ce_quality.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["rankers"], indent=2))
    return res


if __name__ == "__main__":
    main()
