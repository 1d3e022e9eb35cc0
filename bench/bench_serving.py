"""Latency of POST /v1/rank for 100 candidates over real HTTP (uvicorn in a subprocess, httpx client).

    .venv/bin/python -m bench.bench_serving --out runs/bench

Setup (all real): the catalog of the shared ESCI sample (or the demo shop when absent), all-MiniLM-L6-v2
as bi-encoder and as cross-encoder (a fresh 1-logit head: same compute as a fine-tuned one), an XGBoost
LambdaMART on lexical + product + bienc_cos + ce_score trained on a few judged queries and registered in
a temp MLflow store with alias champion. Two workloads:
  cold  every request a new query (cross-encoder cache misses for all 100 pairs)
  warm  the same queries again (cross-encoder LRU cache and bi-encoder cache hits)
Reports client-side p50/p90/p99/mean and the server's own took_ms, plus the machine's load average,
since these 2 cores are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.esci import esci_sample_dir


def _pcts(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, float)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2), "n": len(a)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path, dataset: Path | None, train_queries: int, tiny: bool) -> dict:
    import torch

    torch.set_num_threads(2)
    from features.ondemand import ONDEMAND_FEATURES, OnDemandFeatures
    from ltr import tracking as T
    from ltr.data.dataset import Dataset
    from ltr.serving.demo import demo_dataset, save_encoder, train_and_register

    if dataset is None:
        dataset = demo_dataset(work / "demo", n_queries=30, n_products=600)
    ds = Dataset.load(dataset)
    ce = save_encoder(work / "ce", tiny=tiny)
    qids = sorted(ds.judgments["query_id"].unique())
    j = ds.judgments[ds.judgments["query_id"].isin(qids[:train_queries])]
    X = OnDemandFeatures(ds.products, ce, ce).compute(j[["query", "product_id"]], progress=True)
    uri_db = f"sqlite:///{work}/mlflow.db"
    with T.using_tracking(uri_db, "bench-serving", (work / "artifacts").as_uri()):
        model_uri = train_and_register(X[list(ONDEMAND_FEATURES)], j["grade"], j["query_id"], "bench-serving",
                                       cross_encoder=ce, n_estimators=100)
    return {"dataset": ds, "dataset_dir": Path(dataset), "ce": ce, "model_uri": model_uri, "tracking": uri_db,
            "bench_queries": qids[train_queries:]}


def run(out: Path, dataset: Path | None, n_candidates: int = 100, n_cold: int = 40, n_warm: int = 100,
        train_queries: int = 8, tiny: bool = False, seed: int = 0, threads: int = 2,
        precompute: bool = False, ce_backend: str = "torch", startup_timeout: float = 1200) -> dict:
    import httpx

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    t0 = time.perf_counter()
    prep = prepare(work, dataset, train_queries, tiny)
    setup_s = time.perf_counter() - t0
    ds = prep["dataset"]
    rng = np.random.default_rng(seed)
    all_ids = ds.products["product_id"].to_numpy()
    qtext = dict(zip(ds.queries["query_id"], ds.queries["query"]))
    bench_q = prep["bench_queries"][:n_cold] or list(qtext)[:n_cold]
    requests = []
    for q in bench_q:
        judged = ds.judgments.loc[ds.judgments["query_id"] == q, "product_id"].tolist()[:n_candidates]
        pool = np.setdiff1d(all_ids, judged)
        extra = rng.choice(pool, n_candidates - len(judged), replace=False).tolist()
        requests.append({"query": qtext[q], "product_ids": judged + extra})

    port = _free_port()
    code = (f"import torch; torch.set_num_threads({threads})\n"
            "from ltr.serving.server import serve\n"
            f"serve({prep['model_uri']!r}, port={port}, products={str(prep['dataset_dir'])!r}, "
            f"bi_encoder={str(prep['ce'])!r}, tracking_uri={prep['tracking']!r}, on_missing='error', "
            f"precompute_embeddings={precompute}, ce_backend={ce_backend!r}, "
            "log_level='warning')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(Path(__file__).resolve().parents[1]))
    base = f"http://127.0.0.1:{port}"
    try:
        t1 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t1 > startup_timeout:
                raise RuntimeError(f"server did not come up in {startup_timeout} s")
            time.sleep(0.25)
        startup_s = time.perf_counter() - t1
        res: dict[str, dict] = {}
        with httpx.Client(base_url=base, timeout=60) as c:
            c.post("/v1/rank", json={"query": "warm up request", "product_ids": requests[0]["product_ids"]})
            for name, reqs in (("cold", requests), ("warm", [requests[i % len(requests)] for i in range(n_warm)])):
                lat, took = [], []
                for body in reqs:
                    t = time.perf_counter()
                    r = c.post("/v1/rank", json=body)
                    lat.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 200:
                        raise RuntimeError(f"/v1/rank returned {r.status_code}: {r.text[:300]}")
                    took.append(r.json()["took_ms"])
                res[name] = {"client": _pcts(lat), "server_took": _pcts(took)}
            health = c.get("/health").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "benchmark": "serving /v1/rank latency over real HTTP",
        "n_candidates": n_candidates, "cross_encoder": "tiny random BERT" if tiny else "all-MiniLM-L6-v2 (fresh head)",
        "bi_encoder": "same weights as cross_encoder", "catalog_products": len(ds.products),
        "dataset": str(prep["dataset_dir"]), "model_features": health["features"],
        "results": res, "ce_cache": health["ce_cache"], "setup_seconds": round(setup_s, 1),
        "server_startup_seconds": round(startup_s, 1), "torch_threads_server": threads,
        "precompute_embeddings": precompute, "ce_backend": ce_backend,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
        "timestamp": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for bench_serving.json")
    ap.add_argument("--dataset", type=Path, default=None, help="dataset dir (default: shared ESCI sample, else demo)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--cold", type=int, default=40, help="requests with new queries")
    ap.add_argument("--warm", type=int, default=100, help="repeated requests")
    ap.add_argument("--tiny", action="store_true", help="tiny random BERT instead of MiniLM (plumbing check)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the server (1 wins on a busy machine)")
    ap.add_argument("--precompute", action="store_true", help="embed the catalog at server start")
    ap.add_argument("--ce-backend", default="torch", choices=["torch", "torch-bf16", "onnx", "onnx-int8"])
    a = ap.parse_args()
    ds = a.dataset
    if ds is None:
        esci = esci_sample_dir()
        ds = esci if (esci / "judgments.parquet").exists() else None
    r = run(a.out, ds, a.candidates, a.cold, a.warm, tiny=a.tiny, threads=a.threads,
            precompute=a.precompute, ce_backend=a.ce_backend)
    print(json.dumps({k: r[k] for k in ("results", "catalog_products", "cross_encoder", "torch_threads_server",
                                        "precompute_embeddings", "ce_backend", "server_startup_seconds",
                                        "loadavg_1m_at_end")},
                     indent=2))


if __name__ == "__main__":
    main()
