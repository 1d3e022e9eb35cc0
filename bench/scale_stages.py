"""The stages `bench.bench_scale` measures, one per process, and the data they run on.

    python -m bench.scale_stages STAGE --work DIR --tag TAG --dataset DIR [--scale S]

runs one stage on WORK's data and prints `RESULT {json}` (stage wall seconds, peak and starting RSS, sizes)
as its last line. Each stage is the main job's own function (`ltr.pipeline`, `features.build`, `labels.run`,
`features.store`), so the figures are the job's. Layout under WORK: world<S>x/ (a dataset), run<TAG>/ (what
the job's RunPaths hold: labels, cross_encoder, features, training_frame.parquet), log<M>x/ (the 1x world's
tables with a bigger impressions log, see `make_log`).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


@functools.cache
def run_config():
    """The main job's whole config. Importing it imports torch and transformers (~350 MB): only the stages
    that run an encoder (or the pipeline module) call it, and `main` calls it before their clock starts."""
    from ltr.data.config import load_config
    from ltr.run_config import RunConfig
    return load_config(CONFIG, RunConfig)


@functools.cache
def _yaml() -> dict:
    import yaml
    return yaml.safe_load(CONFIG.read_text())


def features_config():
    """The main job's `features` section alone (what RunConfig validates it into), without torch."""
    from features.config import FeaturesConfig
    return FeaturesConfig.model_validate(_yaml().get("features", {}))


def world_config(scale: int):
    """The main job's world with products, queries and sessions all multiplied by `scale`."""
    from ltr.sim.world import WorldConfig
    w = WorldConfig.model_validate(_yaml()["dataset"]["world"])
    return w.model_copy(update={"n_products": w.n_products * scale, "n_queries": w.n_queries * scale,
                                "sessions": w.sessions * scale})


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    """User + system seconds of every thread of this process (DuckDB's and torch's included): unlike wall time,
    barely moved by other jobs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the big logs ----------------------------------------------------------------------------------------

def _sim_inputs(world: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The candidate frame and per-query session counts the world's simulator used (`ltr.sim.world`)."""
    from ltr.sim.sessions import baseline_scores, lexical_overlap
    cand = pd.read_parquet(world / "candidates.parquet").merge(pd.read_parquet(world / "truth.parquet"),
                                                               on=["query_id", "product_id"])
    prods = pd.read_parquet(world / "products.parquet").set_index("product_id")
    queries = pd.read_parquet(world / "queries.parquet").set_index("query_id")
    for c in ("popularity", "price", "discount"):
        cand[c] = prods[c].reindex(cand["product_id"]).to_numpy()
    text = prods["title"] + " " + prods["brand"].fillna("")
    cand["lexical"] = lexical_overlap(queries["query"].reindex(cand["query_id"]).tolist(),
                                      text.reindex(cand["product_id"]).tolist())
    cand["baseline_score"] = baseline_scores(cand)
    share = queries["volume"] / queries["volume"].sum()
    n = world_config(1).sessions
    return cand, {q: max(2, round(s * n)) for q, s in share.items()}


def make_log(world: Path, out_dirs: dict[int, Path], seed: int = 10_000) -> dict[str, Any]:
    """Dataset dirs holding `world`'s tables (links) and M times its sessions, for each M of `out_dirs`.

    The sessions are simulated again, chunk by chunk: chunk k is the world's whole session volume drawn by
    the world's own simulator (`simulate_sessions`, same ranker, click model, 28 days) with seed SEED+k and
    request ids prefixed `c<k>-`. The same queries and products, M times the traffic; chunks go straight
    to parquet (one row group each), so the generator never holds more than one chunk.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from ltr.data.schemas import IMPRESSIONS
    from ltr.sim.click_model import ClickModel
    from ltr.sim.sessions import simulate_sessions
    wc = world_config(1)
    cand, sessions = _sim_inputs(world)
    writers: dict[int, pq.ParquetWriter] = {}
    t0, rows = time.perf_counter(), dict.fromkeys(out_dirs, 0)
    for k in tqdm(range(max(out_dirs)), desc="simulating sessions", unit="chunk"):
        f = simulate_sessions(cand, sessions, np.random.default_rng(seed + k), click_model=ClickModel(**wc.click_model),
                              days=wc.days, depth=wc.depth, ranker_noise=wc.ranker_noise, progress=False)
        f["request_id"] = f"c{k:04d}-" + f["request_id"]
        t = pa.Table.from_pandas(IMPRESSIONS.validate(f.drop(columns=["pair_idx"])), preserve_index=False)
        t = t.replace_schema_metadata(None)
        for m, d in out_dirs.items():
            if k < m:
                if m not in writers:
                    d.mkdir(parents=True, exist_ok=True)
                    writers[m] = pq.ParquetWriter(d / "impressions.parquet.tmp", t.schema, compression="zstd")
                writers[m].write_table(t)
                rows[m] += len(t)
    for m, d in out_dirs.items():
        writers[m].close()
        os.replace(d / "impressions.parquet.tmp", d / "impressions.parquet")
        for name in ("products", "queries", "candidates", "judgments", "truth"):
            link = d / f"{name}.parquet"
            if not link.exists():
                link.symlink_to(os.path.relpath(world / f"{name}.parquet", d))  # relative: WORK can move
        meta = json.loads((world / "metadata.json").read_text())
        meta.update(simulated_engagement=True, engagement={"note": f"world sessions simulated {m}x (bench)"})
        (d / "metadata.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return {"seconds": round(time.perf_counter() - t0, 1), "impressions": {str(m): r for m, r in rows.items()},
            "method": "the 1x world's session volume simulated again M times by ltr.sim.sessions (seeds "
                      f"{seed}..{seed + max(out_dirs) - 1}), same queries, products and 28 days"}


# --- inputs of the feature stage where the encoders are not run ----------------------------------------------

def proxy_inputs(dataset: Path, run: Path) -> None:
    """Labels and content scores with the real tables' rows and columns, for scales whose encoder stages are
    projected instead of run: label score = true grade / 3, bienc_cos = retrieval score, ce_score = label
    score. Their values only matter to the model, not to the cost of the stages measured here."""
    from ltr.data.dataset import write_table
    from ltr.data.schemas import LABELS
    truth = pd.read_parquet(dataset / "truth.parquet")
    cand = pd.read_parquet(dataset / "candidates.parquet")
    lab = truth.assign(score=truth["grade"] / 3.0, backend="bench-proxy", model="truth", prompt_version="none",
                       cost=0.0, created_at=pd.Timestamp("2026-01-01", tz="UTC"))
    for g in range(4):
        lab[f"p{g}"] = (truth["grade"] == g).astype("float64")
    (run / "labels").mkdir(parents=True, exist_ok=True)
    write_table(lab.drop(columns=["grade"]), run / "labels" / "labels.parquet", LABELS)
    content = cand[["query_id", "product_id"]].merge(lab[["query_id", "product_id", "score"]])
    content["bienc_cos"] = cand["retrieval_score"].to_numpy()
    content = content.rename(columns={"score": "ce_score"})
    content.to_parquet(run / "content.parquet", index=False)


# --- the stages ------------------------------------------------------------------------------------------

def st_dataset(a) -> dict:
    from ltr.sim.world import generate_world
    s = generate_world(a.dataset, seed=int(_yaml()["seed"]), cfg=world_config(a.scale), progress=False)
    return {"counts": s["counts"]}


def st_labels(a) -> dict:
    from labels.run import label_pairs
    out = a.run / "labels" / "labels.parquet"
    shutil.rmtree(out.parent, ignore_errors=True)  # a cold label cache: the stage's real cost
    s = label_pairs(a.dataset, out, run_config().labels, progress=False)
    return {"pairs": s["n_pairs"], "labelled": s["n_labelled"]}


def st_bi_encoder(a, warm: bool = False) -> dict:
    """The pipeline's bi-encoder stage on a cold embedding cache (warm: again, reading what the cold run stored)."""
    from features.biencoder import score_pairs
    from ltr.data.dataset import Dataset
    ds, cache = Dataset.load(a.dataset), a.work / f"embedding_cache_{a.tag}"
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    s = score_pairs(ds.candidates[["query_id", "product_id"]], ds.products, ds.queries, cache_dir=cache)
    if not warm:
        ce = pd.read_parquet(a.run / "content.parquet") if (a.run / "content.parquet").exists() else None
        out = s if ce is None else s.merge(ce.drop(columns=["bienc_cos"], errors="ignore"), how="left")
        out.to_parquet(a.run / "content.parquet", index=False)
    return {"pairs": len(s), "texts": int(ds.candidates["product_id"].nunique() + ds.candidates["query_id"].nunique())}


def st_ce_finetune(a) -> dict:
    """One epoch of the main job's cross-encoder fine-tune on the first N labelled pairs (throughput)."""
    from features.crossencoder import fine_tune_cross_encoder
    from ltr.data.dataset import Dataset
    ds = Dataset.load(a.dataset)
    lab = pd.read_parquet(a.run / "labels" / "labels.parquet")
    q = sorted(lab["query_id"].unique())[:a.ce_queries]
    pairs = lab[lab["query_id"].isin(q)][["query_id", "product_id", "score"]].reset_index(drop=True)
    cfg = run_config().cross_encoder.model_copy(update={"epochs": 1})
    fine_tune_cross_encoder(pairs, ds.products, ds.queries, a.work / "ce_model", cfg, seed=0, progress=False)
    return {"pairs": len(pairs), "epochs": 1}


def st_ce_score(a) -> dict:
    """The pipeline's chunked cross-encoder scoring of every candidate pair."""
    from features.crossencoder import CrossEncoderScorer, score_pairs
    from features.resumable import score_in_chunks
    from ltr.data.dataset import Dataset
    ds = Dataset.load(a.dataset)
    scorer = CrossEncoderScorer(a.work / "ce_model")
    parts = a.run / "cross_encoder" / "ce.parts"
    shutil.rmtree(parts, ignore_errors=True)
    s = score_in_chunks(ds.candidates[["query_id", "product_id"]].reset_index(drop=True),
                        lambda c: score_pairs(c, ds.products, ds.queries, scorer), parts, scorer.version)
    content = pd.read_parquet(a.run / "content.parquet").drop(columns=["ce_score"], errors="ignore")
    content.merge(s, on=["query_id", "product_id"], how="left").to_parquet(a.run / "content.parquet", index=False)
    return {"pairs": len(s)}


def st_family(a, family: str) -> dict:
    """build_features for one family (the main job's features stage, split so each family gets its own RSS)."""
    from features.build import build_features
    cfg = features_config().model_copy(update={"families": [family]})
    content = pd.read_parquet(a.run / "content.parquet") if family == "content" else None
    labels = a.run / "labels" / "labels.parquet" if family == "labels" else None
    info = build_features(a.dataset, a.run / "features", cfg, ce_scores=content, progress=False, labels=labels)
    return {"rows": info["views"]}


def st_engagement_pandas(a) -> dict:
    """The engagement features as the job computed them before this benchmark: the log as one pandas frame."""
    from features.build import PRODUCT_KEYED
    from features.engagement import engagement_features
    from ltr.data.dataset import Dataset, write_table
    from ltr.data.schemas import FEATURES
    cfg, ds, out = features_config(), Dataset.load(a.dataset), a.work / f"pandas_{a.tag}"
    qp, p = engagement_features(ds.impressions, cfg.windows_days, cfg.smoothing, cfg.position_prior_strength)
    rows = {"engagement_qp": len(write_table(qp, out / "engagement_qp.parquet", FEATURES)),
            "engagement_product": len(write_table(p, out / "engagement_product.parquet", PRODUCT_KEYED))}
    return {"rows": rows}


def st_feast_apply(a) -> dict:
    from features.store import LtrStore
    LtrStore(a.run / "features", features_config()).apply()
    return {}


def st_materialize(a) -> dict:
    from features.store import LtrStore
    return {"rows": LtrStore(a.run / "features", features_config()).bulk_materialize(progress=False)}


def st_training_frame(a) -> dict:
    from features.store import LtrStore
    from ltr.data.dataset import Dataset
    from ltr.pipeline import RunPaths, engagement_cutoff, stage_training_frame
    cfg, ds = run_config(), Dataset.load(a.dataset)
    cutoff = engagement_cutoff(ds.impressions_path, cfg.train_window.label_days)
    frame = stage_training_frame(cfg, RunPaths(a.run), ds, LtrStore(a.run / "features", cfg.features), cutoff)
    return {"rows": len(frame), "columns": frame.shape[1]}


STAGES = {
    "dataset": st_dataset, "labels": st_labels, "bi_encoder": st_bi_encoder,
    "bi_encoder_warm": lambda a: st_bi_encoder(a, warm=True), "ce_finetune": st_ce_finetune, "ce_score": st_ce_score,
    "lexical": lambda a: st_family(a, "lexical"), "product": lambda a: st_family(a, "product"),
    "engagement": lambda a: st_family(a, "engagement"), "content_view": lambda a: st_family(a, "content"),
    "labels_view": lambda a: st_family(a, "labels"), "engagement_pandas": st_engagement_pandas,
    "feast_apply": st_feast_apply, "materialize": st_materialize, "training_frame": st_training_frame,
}
NEEDS_RUN_CONFIG = {"labels", "ce_finetune", "training_frame"}
#: modules a stage needs, imported before its clock starts: the figures are the stage's work, not import time
IMPORTS = {"dataset": ["ltr.sim.world"], "labels": ["labels.run", "torch", "transformers"],
           "bi_encoder": ["features.biencoder"], "bi_encoder_warm": ["features.biencoder"],
           "ce_finetune": ["features.crossencoder"], "ce_score": ["features.crossencoder", "features.resumable"],
           "lexical": ["features.build", "features.lexical"], "labels_view": ["features.build", "features.labels_view"],
           "feast_apply": ["features.store", "feast"], "materialize": ["features.store", "feast", "duckdb"],
           "training_frame": ["features.store", "feast", "ltr.pipeline", "duckdb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--ce-queries", type=int, default=100)
    a = ap.parse_args()
    a.run = a.work / f"run{a.tag}"
    a.run.mkdir(parents=True, exist_ok=True)
    for m in IMPORTS.get(a.stage, ["features.build", "duckdb"]):
        importlib.import_module(m)
    if a.stage in NEEDS_RUN_CONFIG:
        run_config()
    before, cpu0 = rss_mb(), _cpu_s()
    t0 = time.perf_counter()
    extra = STAGES[a.stage](a)
    res = {"stage": a.stage, "tag": a.tag, "wall_s": round(time.perf_counter() - t0, 2),
           "cpu_s": round(_cpu_s() - cpu0, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
           "start_rss_mb": round(before, 1), **extra}
    print("RESULT " + json.dumps(res, default=str), flush=True)


if __name__ == "__main__":
    main()
