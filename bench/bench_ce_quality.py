r"""Held-out quality of the fine-tuned cross-encoder vs the zero-shot bi-encoder, BM25 and random.

Query-grouped K-fold on the real ESCI sample (`../shared/data/esci/`, or $LTR_ESCI_DIR): for each fold
the cross-encoder is fine-tuned on the human grades (grade / 3, or `--esci-target gain`) of the *other*
folds' queries (with its own query-grouped early-stopping split) and scores the fold's queries, so every
query is scored out-of-fold. NDCG@10 with ESCI gains (E=1, S=0.1, C=0.01, I=0) and exponential gains (2^g - 1), and a
paired bootstrap of the cross-encoder against the bi-encoder over queries.

`--extra-labels RUN_DIR` adds a run's LLM labels table (another catalogue: the built-in world after
`make run`) to every fold's training set, as the main job trains its cross-encoder; `--extra-only` is the
control that leaves the ESCI grades out.

    .venv/bin/python -m bench.bench_ce_quality --out DIR [--folds 3] [--set epochs=2 --set loss=listwise]
    .venv/bin/python -m bench.bench_ce_quality --out DIR --extra-labels runs/default --esci-target gain \
        --set val_fraction=0.2 --set epochs=1 --set evals_per_epoch=2
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
from ltr.data.metrics import ESCI_GAINS, irrelevant_per_query, ndcg_per_query
from ltr.data.provenance import stamp


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
    """The project's own query metrics (`ltr.data.metrics`), averaged over queries."""
    q, g = judg["query_id"].to_numpy(), judg["grade"].to_numpy()
    return {"ndcg10_esci": round(float(ndcg_per_query(q, scores, g, 10, "esci").mean()), 4),
            "ndcg10_exp": round(float(ndcg_per_query(q, scores, g, 10, "exp").mean()), 4),
            "irrelevant_at10": round(float(irrelevant_per_query(q, scores, g, 10).mean()), 4)}


def paired_comparison(judg: pd.DataFrame, a: np.ndarray, b: np.ndarray, n_boot: int = 10000,
                      seed: int = 0) -> dict[str, float]:
    """Per-query NDCG@10 (ESCI gains) of ranker a minus ranker b: mean, a 95% paired-bootstrap interval
    over queries, and wins / losses / ties. Why: with ~90 queries a 0.01 gap can be noise."""
    d = (ndcg_per_query(judg["query_id"], a, judg["grade"], 10, "esci")
         - ndcg_per_query(judg["query_id"], b, judg["grade"], 10, "esci")).dropna().to_numpy()
    boot = np.random.default_rng(seed).choice(d, (n_boot, len(d))).mean(1)
    return {"n_queries": len(d), "mean_diff": round(float(d.mean()), 4),
            "ci95": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
            "p_boot_le_0": round(float((boot <= 0).mean()), 4),
            "wins": int((d > 1e-9).sum()), "losses": int((d < -1e-9).sum()), "ties": int((abs(d) <= 1e-9).sum())}


def untrained_scores(pairs: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, cfg) -> np.ndarray:
    """Raw logits of the model fine-tuning starts from (for the segment-cosine head: ~ bi-encoder)."""
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _length_batches, _tokenize_pairs
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


def load_extra_labels(run: Path, judg: pd.DataFrame, products: pd.DataFrame
                      ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(pairs, products, queries) of another run's labels table, checked not to touch the ESCI sample."""
    paths = [run / "labels" / "labels.parquet", run / "dataset" / "products.parquet",
             run / "dataset" / "queries.parquet"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"--extra-labels: {missing} not found. Fix: run `make run` (or `ltr run`) first, or pass "
                 "the run dir that holds labels/ and dataset/.")
    lab = pd.read_parquet(paths[0])[["query_id", "product_id", "score"]]
    prods = pd.read_parquet(paths[1])
    qs = pd.read_parquet(paths[2])[["query_id", "query"]]
    clash_q = set(lab["query_id"]) & set(judg["query_id"])
    clash_p = set(prods["product_id"]) & set(products["product_id"])
    if clash_q or clash_p:
        sys.exit(f"--extra-labels shares {len(clash_q)} query and {len(clash_p)} product id(s) with the ESCI "
                 "sample; a held-out query must never be trained on. Fix: use a run on another catalogue.")
    return lab, prods[[c for c in products.columns if c in prods.columns]], qs


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
    """Run the K-fold benchmark and write ce_quality.json.

    Script-style on purpose: the baselines, the fold loop and the paired comparison fill and read the
    same out-of-fold score arrays, so reading it top to bottom is reading the experiment.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--only-folds", type=int, nargs="*", default=None, help="run a subset (for quick checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="CrossEncoderConfig override key=json")
    ap.add_argument("--extra-labels", default=None, metavar="RUN_DIR",
                    help="also train every fold on a run's LLM labels table (RUN_DIR/labels/labels.parquet, "
                         "with RUN_DIR/dataset/{products,queries}.parquet), e.g. runs/default after `make run`")
    ap.add_argument("--extra-val", choices=("all", "esci"), default="all",
                    help="with --extra-labels, the early-stopping queries: a share of all training queries "
                         "(the main job's way) or of the ESCI training-fold queries only")
    ap.add_argument("--extra-only", action="store_true",
                    help="control for --extra-labels: train on those labels alone (no ESCI grades), same "
                         "recipe and seeds, so the ESCI labels' own contribution can be read off")
    ap.add_argument("--esci-target", choices=("grade", "gain"), default="grade",
                    help="training score of an ESCI pair: grade / 3, or the ESCI gain the metric uses "
                         "(E=1, S=0.1, C=0.01, I=0)")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--baselines-from", default=None, help="reuse bi-encoder scores saved by an earlier run")
    ap.add_argument("--no-init-score", action="store_true",
                    help="skip scoring each held-out fold with the untrained model (the starting point)")
    a = ap.parse_args(argv)
    if a.extra_only and (not a.extra_labels or a.extra_val == "esci"):
        ap.error("--extra-only needs --extra-labels RUN_DIR and --extra-val all.")
    torch.set_num_threads(a.threads)

    from features.biencoder import BiEncoder
    from features.crossencoder import CrossEncoderConfig, CrossEncoderScorer, fine_tune_cross_encoder, score_pairs
    from features.text import pair_texts

    products, judg, queries = load_esci(esci_dir())
    judg = judg.reset_index(drop=True)
    cfg = CrossEncoderConfig(**{"val_fraction": 0.15, "num_threads": a.threads, **parse_set(a.set)})
    res: dict = {"benchmark": "ce_quality", "data": str(esci_dir()), "n_queries": int(judg["query_id"].nunique()),
                 **stamp(), "n_pairs": len(judg), "folds": a.folds, "seed": a.seed, "esci_target": a.esci_target,
                 "config": cfg.model_dump(mode="json"),
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

    extra = load_extra_labels(Path(a.extra_labels), judg, products) if a.extra_labels else None
    if extra is not None:
        res["extra_labels"] = {"run_dir": a.extra_labels, "val": a.extra_val, "extra_only": a.extra_only,
                               "n_pairs": len(extra[0]),
                               "n_queries": int(extra[0]["query_id"].nunique())}
        products = pd.concat([products, extra[1]], ignore_index=True)
        queries = pd.concat([queries, extra[2]], ignore_index=True)

    uq = np.array(sorted(judg["query_id"].unique()))
    np.random.default_rng(a.seed).shuffle(uq)
    fold_of = {q: i % a.folds for i, q in enumerate(uq)}
    fold = judg["query_id"].map(fold_of).to_numpy()
    ce = np.full(len(judg), np.nan)
    res["fold_runs"] = []
    tmp = Path(tempfile.mkdtemp(prefix="ce_quality_"))
    for f in (a.only_folds if a.only_folds is not None else range(a.folds)):
        tr, te = judg[fold != f], judg[fold == f]
        target = tr["grade"].map(ESCI_GAINS) if a.esci_target == "gain" else tr["grade"] / 3.0
        pairs = tr[["query_id", "product_id"]].assign(score=target.astype(float))
        init = None
        if not a.no_init_score:  # held-out NDCG of the untrained starting point (ranking only)
            init = untrained_scores(te, products, queries, cfg)
        t = time.time()
        val_q = None
        if extra is not None:
            if a.extra_val == "esci":  # early stopping on ESCI queries of the training folds only
                from features.crossencoder.trainer import _split_queries

                val_q = sorted(_split_queries(pairs["query_id"], cfg.val_fraction, a.seed + f)[1])
            pairs = extra[0] if a.extra_only else pd.concat([pairs, extra[0]], ignore_index=True)
        meta = fine_tune_cross_encoder(pairs, products, queries, tmp / f"fold{f}", cfg, seed=a.seed + f,
                                       val_query_ids=val_q)
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
    res["ce_minus_bienc_ce_text"] = paired_comparison(sub, ce[done], bi_ce_text[done])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    sub.assign(ce_oof=ce[done], bienc_ce_text=bi_ce_text[done], bienc_title_brand=bi_tb[done])[
        ["query_id", "product_id", "grade", "ce_oof", "bienc_ce_text", "bienc_title_brand"]].to_parquet(
        Path(a.out) / "oof_scores.parquet")
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
    print(json.dumps({**res["rankers"], "ce_minus_bienc_ce_text": res["ce_minus_bienc_ce_text"]}, indent=2))
    return res


if __name__ == "__main__":
    main()
