"""Cross-encoder inference speed: our scorer vs sentence-transformers' CrossEncoder.predict.

Same weights, same 4,135 real ESCI (query, product) pairs, same max length, measured side by side in
one process (interleaved rounds, best round per method, so a noisy shared CPU hurts both alike).
Reports pairs/s, the speed ratio, max |score diff| vs sentence-transformers (fp32 paths) and Spearman
vs fp32 (reduced-precision paths).

    .venv/bin/python -m bench.bench_crossencoder --out DIR [--model CE_DIR] [--rounds 2]

Without --model, a cross-encoder is built from all-MiniLM-L6-v2 with a seeded fresh head (speed and
agreement do not depend on the head's training; pass a fine-tuned dir to measure that one).
--head cls (default) measures the plain BertForSequenceClassification that sentence-transformers loads
natively; --head segment_cosine measures our segment-cosine head, which sentence-transformers loads
with trust_remote_code=True from the modeling file saved next to the weights. An untrained
segment-cosine head's sigmoid saturates at 1.0, so for it (or with --raw-logits) both sides are
compared on raw logits (our activation="none", ST's activation_fn=Identity), a stricter check.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.bench_ce_quality import esci_dir, load_esci
from ltr.data.provenance import stamp


def build_untrained(out: Path, max_length: int, seed: int = 0, head: str = "cls") -> Path:
    from features.crossencoder import META_FILE, CrossEncoderConfig, load_base_cross_encoder

    torch.manual_seed(seed)
    model, tok = load_base_cross_encoder(None, max_length, CrossEncoderConfig(head=head, max_length=max_length))
    if head != "cls":
        model.register_for_auto_class("AutoModelForSequenceClassification")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / META_FILE).write_text(json.dumps({"version": "untrained-head", "config": {"max_length": max_length}}))
    return out


def main(argv: list[str] | None = None) -> dict:
    """Time every backend against sentence-transformers and write the report.

    One function on purpose: the backends are timed in interleaved rounds inside one loop, so a noisy
    shared CPU slows them alike; split apart, the rounds would no longer be comparable.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="cross-encoder dir (default: fresh-head MiniLM)")
    ap.add_argument("--max-length", type=int, default=64, help="only used when --model is not given")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--st-batch-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--backends", nargs="*", default=["torch", "torch-bf16", "onnx", "onnx-int8"])
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs (quick checks)")
    ap.add_argument("--head", choices=["cls", "segment_cosine"], default="cls",
                    help="head of the untrained model built when --model is not given")
    ap.add_argument("--raw-logits", action="store_true", help="compare raw logits instead of sigmoid scores")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from sentence_transformers import CrossEncoder

    from features.crossencoder import CrossEncoderScorer
    from features.text import pair_texts

    tmp = Path(tempfile.mkdtemp(prefix="ce_speed_"))
    model_dir = Path(a.model) if a.model else build_untrained(tmp / "ce", a.max_length, head=a.head)
    raw = a.raw_logits or (not a.model and a.head == "segment_cosine")
    act = "none" if raw else "sigmoid"
    products, judg, queries = load_esci(esci_dir())
    ref_scorer = CrossEncoderScorer(model_dir)
    tk = {k: v for k, v in ref_scorer.meta.get("text", {}).items()}
    qs, ts = pair_texts(judg, products, queries, **tk)
    if a.limit:
        qs, ts = qs[:a.limit], ts[:a.limit]
    pairs = list(zip(qs, ts))

    remote = (model_dir / "crossencoder_modeling.py").exists()  # our custom head ships its code
    st = CrossEncoder(str(model_dir), device="cpu", max_length=ref_scorer.max_length, trust_remote_code=remote)
    st_kw = {"activation_fn": torch.nn.Identity()} if raw else {}
    scorers = {b: CrossEncoderScorer(model_dir, backend=b, onnx_dir=tmp / "onnx", num_threads=a.threads,
                                     activation=act) for b in a.backends}
    runs = {"sentence_transformers": lambda: st.predict(pairs, batch_size=a.st_batch_size,
                                                         show_progress_bar=False, **st_kw)}
    for b, sc in scorers.items():
        runs[b] = (lambda sc=sc: sc.score(qs, ts, batch_size=a.batch_size))
    warm_q, warm_t = qs[:64], ts[:64]  # warm-up (ONNX sessions, allocator, oneDNN kernels)
    st.predict(pairs[:64], batch_size=a.st_batch_size, show_progress_bar=False)
    for sc in scorers.values():
        sc.score(warm_q, warm_t, batch_size=a.batch_size)

    times: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, np.ndarray] = {}
    for r in range(a.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            outs[name] = np.asarray(fn(), dtype=np.float64)
            times[name].append(time.perf_counter() - t)
            print(f"round {r} {name}: {len(pairs) / times[name][-1]:.1f} pairs/s", flush=True)

    ref = outs["sentence_transformers"]
    st_best = min(times["sentence_transformers"])
    res = {"benchmark": "crossencoder_speed", **stamp(), "n_pairs": len(pairs),
           "model": str(a.model or f"fresh-head MiniLM ({a.head})"), "compared": "logits" if raw else "sigmoid",
           "st_trust_remote_code": remote,
           "max_length": ref_scorer.max_length, "threads": a.threads, "rounds": a.rounds,
           "batch_size": a.batch_size, "st_batch_size": a.st_batch_size,
           "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "loadavg_1m": os.getloadavg()[0]}, "methods": {}}
    for name in runs:
        best = min(times[name])
        res["methods"][name] = {
            "pairs_per_s": round(len(pairs) / best, 1), "seconds_best": round(best, 3),
            "seconds_all": [round(x, 3) for x in times[name]],
            "speedup_vs_st": round(st_best / best, 3),
            "max_abs_diff_vs_st": float(np.abs(outs[name] - ref).max()),
            "spearman_vs_st_fp32": round(float(spearmanr(outs[name], ref).statistic), 5)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossencoder_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["methods"], indent=2))
    return res


if __name__ == "__main__":
    main()
