"""The main job as composable stages: dataset -> labels -> cross-encoder -> Feast features -> training
frame -> train / tune / experiments -> register -> evaluate.

Every stage is a plain function over typed tables and directories, so a notebook can call them one by
one and the CLI (`ltr run`) just calls `run_all`. Each stage writes its outputs under the run directory
and skips itself when its outputs already exist for the same inputs (so a crashed run resumes).

Leakage rules this module enforces:
- engagement features are read point-in-time as of `cutoff`; engagement *labels* (and the held-out
  engagement used for evaluation) come from the window after `cutoff`;
- the cross-encoder score of a query comes from a cross-encoder that never saw that query's labels
  (2-fold cross-fitting over queries), so any query split downstream is clean;
- `truth.parquet` (ground truth) only ever fills the evaluation-only `grade` column.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.dataset import Dataset
from ltr.data.engagement import COUNT_COLUMNS, smoothed_rate
from ltr.data.provenance import stamp
from ltr.run_config import RunConfig


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def labels(self) -> Path:
        return self.root / "labels" / "labels.parquet"

    @property
    def ce(self) -> Path:
        return self.root / "cross_encoder"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def frame(self) -> Path:
        return self.root / "training_frame.parquet"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def _log(msg: str) -> None:
    print(f"[ltr {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stamp_ok(path: Path, key: str) -> bool:
    s = path.with_name(path.name + ".stamp") if path.suffix else path / ".stamp"
    return s.exists() and s.read_text().strip() == key


def _stamp(path: Path, key: str) -> None:
    s = path.with_name(path.name + ".stamp") if path.suffix else path / ".stamp"
    s.parent.mkdir(parents=True, exist_ok=True)
    s.write_text(key + "\n")


# --- stage 1: dataset ---------------------------------------------------------------------------

def stage_dataset(cfg: RunConfig, paths: RunPaths) -> Path:
    """The built-in world (default), an ESCI folder, or an existing dataset directory."""
    d = cfg.dataset
    if d.source == "dir":
        if d.path is None:
            raise ValueError("dataset.path is required when dataset.source is 'dir'. Fix: set dataset.path.")
        ds_dir = Path(d.path)
    else:
        ds_dir = paths.dataset
        key = _digest({"source": d.source, "seed": cfg.seed, "world": d.world.model_dump(), "path": str(d.path)})
        if not _stamp_ok(ds_dir, key):
            if d.source == "world":
                from ltr.sim.world import generate_world
                _log("stage dataset: generating the built-in world")
                s = generate_world(ds_dir, seed=cfg.seed, cfg=d.world)
                _log(f"  world: {json.dumps({k: s[k] for k in s if not isinstance(s[k], (dict, list))})}")
            else:
                from ltr.data.esci import load_esci
                if d.path is None:
                    raise ValueError("dataset.path is required when dataset.source is 'esci'.")
                load_esci(d.path, ds_dir)
            _stamp(ds_dir, key)
    ds_dir = stage_mine(cfg, paths, ds_dir)
    ds = Dataset.load(ds_dir)
    if not ds.has_engagement and d.simulate_engagement:
        from ltr.sim.sessions import simulate_engagement
        _log("stage dataset: no engagement log; simulating one (reported as simulated)")
        simulate_engagement(ds_dir, seed=cfg.seed, relevance=d.simulated_relevance)
    return ds_dir


def stage_mine(cfg: RunConfig, paths: RunPaths, ds_dir: Path) -> Path:
    """A dataset without candidate lists (products + queries) gets them from catalog-wide retrieval and
    label-free mining (`ltr.retrieval`): RUN/retrieval/KEY/dataset, its candidates the budget's pairs with
    their difficulty level. Any other dataset passes through unless `retrieval.enabled: true`."""
    from ltr.retrieval.stage import check_labeler, mine_dataset, wants_retrieval
    ds = Dataset.load(ds_dir)
    if not wants_retrieval(cfg.retrieval, ds):
        return ds_dir
    check_labeler(cfg.labels, ds)
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(ds_dir).glob("*.parquet"))
    key = _digest({"src": str(ds_dir), "files": stats, "r": cfg.retrieval.model_dump(mode="json"),
                   "m": cfg.mining.model_dump(mode="json"), "seed": cfg.seed})
    out = paths.root / "retrieval" / key
    if _stamp_ok(out, key) and (out / "dataset").is_dir():
        _log("stage mine: up to date")
        return out / "dataset"
    _log(f"stage mine: retrieving over the whole catalog of {ds_dir} (no candidate lists), mining levels")
    s = mine_dataset(ds_dir, out, cfg.retrieval, cfg.mining, seed=cfg.seed, tracking_uri=cfg.tracking.uri)
    _log(f"  mined: {s['retrieved_pairs']} retrieved pairs, {s['selected']} chosen to label: {s['allocation']}")
    _stamp(out, key)
    return out / "dataset"


# --- stage 2: labels -----------------------------------------------------------------------------

def has_pilot(cfg: RunConfig) -> bool:
    """A pilot (`labels.seed_share` / `seed_queries`): the run may use the human grades of its seed queries
    (to fit the grader) and of its test queries (to evaluate), and no other."""
    return cfg.labels.seed_share is not None or cfg.labels.seed_queries is not None


def run_test_queries(cfg: RunConfig, ds: Dataset) -> set[str]:
    """The query ids the run holds out: the same split `stage_tune` makes of the training frame."""
    from ltr.data.splits import held_out_queries
    return held_out_queries(ds.candidates["query_id"], cfg.train.test_fraction, cfg.seed)


def stage_labels(cfg: RunConfig, paths: RunPaths, ds_dir: Path) -> dict[str, Any]:
    """The labeler's grade of every candidate pair, then the run's human corrections over it (labels.human,
    RUN/labels/human.sqlite: the workbench's clicks win). The labeler's own table is kept beside
    (labels.labeler.parquet), so a new correction is applied without re-grading; the stamp carries the
    store's state, so labels.parquet is rewritten and every stage that reads it (cross-encoder targets, the
    label view, the training frame's content_score) runs again."""
    from labels.human import human_state
    from labels.run import label_pairs
    pilot = has_pilot(cfg)
    key = _digest({"ds": str(ds_dir), "labels": cfg.labels.model_dump(mode="json"), "seed": cfg.seed}
                  | ({"test_fraction": cfg.train.test_fraction} if pilot else {}))
    human = human_state(paths.root)
    full = key if human is None else f"{key} human:{human['rows']}:{human['last_id']}"
    summary_path = paths.labels.with_suffix(".summary.json")
    own = paths.labels.with_name("labels.labeler.parquet")
    if _stamp_ok(paths.labels, full) and paths.labels.exists():
        _log("stage labels: up to date")
        return json.loads(summary_path.read_text()) if summary_path.exists() else {}
    kept = _stamp_ok(own, key) and own.exists()
    if kept or (_stamp_ok(paths.labels, key) and paths.labels.exists()):  # the latter: no correction in it yet
        _log("stage labels: the labeler's grades are up to date; the human corrections changed")
        s = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    else:
        _log(f"stage labels: grading candidate pairs with backend '{cfg.labels.backend}'")
        exclude = sorted(run_test_queries(cfg, Dataset.load(ds_dir))) if pilot else ()
        s = label_pairs(ds_dir, paths.labels, cfg.labels, client=dask_client_of(cfg), exclude_queries=exclude)
        if pilot:
            g = s.get("grader_fitted", {})
            _log(f"  pilot: the grader learnt from {g.get('seed_queries')} training queries "
                 f"({g.get('seed_pairs')} human-graded pairs); the run's {len(exclude)} test queries never seen")
        _stamp(paths.labels, key)
    if human is not None or kept:
        _apply_human(paths, ds_dir, key, own, s)
    _stamp(paths.labels, full)
    return s


def _apply_human(paths: RunPaths, ds_dir: Path, key: str, own: Path, s: dict[str, Any]) -> None:
    """labels.parquet = the labeler's labels (`own`, saved first: labels.parquet is theirs until now) with
    the latest correction of each candidate pair over them; the counts go into the stage's summary."""
    import os

    from labels.human import HumanLabels, human_store_path, override_labels
    from ltr.data.dataset import write_table
    from ltr.data.schemas import LABELS
    if not (_stamp_ok(own, key) and own.exists()):
        shutil.copyfile(paths.labels, own.with_suffix(".tmp"))
        os.replace(own.with_suffix(".tmp"), own)
        _stamp(own, key)
    store = human_store_path(paths.root)
    latest = None
    if store.exists():  # absent: the corrections were moved away, and labels.parquet is the labeler's again
        with HumanLabels(store) as h:
            latest = h.latest()
    ds = Dataset.load(ds_dir)
    out, counts = override_labels(pd.read_parquet(own), latest, ds.candidates, ds.queries)
    write_table(out, paths.labels, LABELS)
    s["human"] = counts | {"store": str(store)}
    _log(f"  human corrections: {counts['applied']} candidate pairs take a person's grade ({counts['changed']} "
         f"changed), {counts['not_in_candidates']} corrected pairs are not candidates of this run")
    tmp = paths.labels.with_suffix(".summary.json.tmp")
    tmp.write_text(json.dumps(s, indent=2, default=str) + "\n")
    os.replace(tmp, paths.labels.with_suffix(".summary.json"))


def pilot_seed(cfg: RunConfig, paths: RunPaths) -> set[str] | None:
    """The pilot's seed queries (written by the labels stage), or None for a run without a pilot."""
    if not has_pilot(cfg):
        return None
    seed_file = paths.labels.parent / "grader" / "seed_queries.json"
    if not seed_file.exists():
        raise FileNotFoundError(f"{seed_file}: the pilot's seed queries are missing. Fix: re-run the labels "
                                "stage (delete RUN/labels/labels.parquet.stamp).")
    return set(json.loads(seed_file.read_text()))


def pilot_grades(cfg: RunConfig, paths: RunPaths, frame: pd.DataFrame, ds: Dataset) -> pd.DataFrame:
    """With a pilot, the human grades of training queries outside the seed set leave the frame (NaN): tuning,
    the cold route and every choice made on training queries see only what the pilot paid for (and the
    label view, `stage_features`, holds only the seed's human labels, so the content label is the grader's)."""
    if not has_pilot(cfg) or "grade" not in frame.columns:
        return frame
    keep = pilot_seed(cfg, paths) | run_test_queries(cfg, ds)
    frame.loc[~frame["query_id"].isin(keep), "grade"] = np.nan
    return frame


# --- stage 3: cross-encoder (cross-fitted) -------------------------------------------------------

def query_folds(query_ids: pd.Series | np.ndarray, n_folds: int, seed: int) -> dict[str, int]:
    """Deterministic fold of every query (hash of id and seed), independent of row order."""
    out = {}
    for q in sorted(set(map(str, query_ids))):
        h = int(hashlib.sha1(f"{seed}:{q}".encode()).hexdigest()[:8], 16)
        out[q] = h % n_folds
    return out


def stage_cross_encoder(cfg: RunConfig, paths: RunPaths, ds: Dataset, targets: pd.DataFrame,
                        name: str = "llm", n_folds: int = 2) -> pd.DataFrame:
    """Cross-fitted cross-encoder scores: each query is scored by a model fitted on the other fold(s).

    `targets` holds (query_id, product_id, score in [0,1]): LLM labels for the `ce_score` feature, or
    purchase labels for the Hopit.ai comparison. Returns DataFrame[query_id, product_id, <column>].
    """
    from features.crossencoder import CrossEncoderScorer, fine_tune_cross_encoder
    from features.resumable import score_in_chunks
    col = "ce_score" if name == "llm" else f"ce_{name}_score"
    out_path = paths.ce / f"{name}_scores.parquet"
    key = _digest({"ce": cfg.cross_encoder.model_dump(mode="json"), "n": len(targets),
                   "t": float(targets["score"].sum()), "seed": cfg.seed, "folds": n_folds})
    if _stamp_ok(out_path, key) and out_path.exists():
        _log(f"stage cross-encoder [{name}]: up to date")
        return pd.read_parquet(out_path)
    folds = query_folds(ds.candidates["query_id"], n_folds, cfg.seed)
    cand = ds.candidates[["query_id", "product_id"]].copy()
    cand_fold = cand["query_id"].map(folds).to_numpy()
    t_fold = targets["query_id"].map(folds).to_numpy()
    parts = []
    for f in range(n_folds):
        mdir = paths.ce / f"{name}_fold{f}"
        _log(f"stage cross-encoder [{name}]: fine-tuning fold {f + 1}/{n_folds} "
             f"on {int((t_fold != f).sum())} labelled pairs of the other fold(s)")
        fine_tune_cross_encoder(targets[t_fold != f].reset_index(drop=True), ds.products, ds.queries, mdir,
                                cfg.cross_encoder, seed=cfg.seed + f)
        scorer = CrossEncoderScorer(mdir)
        sub = cand[cand_fold == f].reset_index(drop=True)
        # chunks written as they finish (RUN/cross_encoder/<name>_fold<f>.parts): a killed run resumes there
        parts.append(score_in_chunks(sub, _ce_chunk_scorer(cfg, ds, scorer, mdir),
                                     paths.ce / f"{name}_fold{f}.parts", scorer.version, progress=True))
    scores = pd.concat(parts, ignore_index=True).rename(columns={"ce_score": col})
    scores = scores.sort_values(["query_id", "product_id"]).reset_index(drop=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out_path, index=False)
    _stamp(out_path, key)
    for f in range(n_folds):
        shutil.rmtree(paths.ce / f"{name}_fold{f}.parts", ignore_errors=True)
    return scores


def _ce_chunk_scorer(cfg: RunConfig, ds: Dataset, scorer: Any, mdir: Path):
    """Scores one chunk of pairs: here, or with `compute.engine: dask` over partitions on the workers (the
    model loaded once per worker; features.distributed_scoring)."""
    from features.crossencoder import score_pairs
    client = dask_client_of(cfg)
    if client is None:
        return lambda c: score_pairs(c, ds.products, ds.queries, scorer, progress=True)
    from features.distributed_scoring import score_distributed
    return lambda c: score_distributed(c, ds.products, ds.queries, "ce", mdir, client=client)


def bi_encoder_scores(ds: Dataset, paths: RunPaths, client: Any = None) -> pd.DataFrame:
    from features.biencoder import default_biencoder, score_pairs
    from features.query_encoder import export_query_encoder
    from ltr.data.embedding_cache import default_cache_dir
    out_path = paths.ce / "bienc_scores.parquet"
    if out_path.exists() and len(pd.read_parquet(out_path, columns=["query_id"])) == len(ds.candidates):
        s = pd.read_parquet(out_path)
    else:
        _log("stage cross-encoder: zero-shot bi-encoder cosine for every candidate")
        # embeddings come from (and go to) the machine's embedding cache: a product embedded earlier is read
        if client is not None:  # compute.engine: dask: over partitions, the model loaded once per worker
            from features.distributed_scoring import score_distributed
            s = score_distributed(ds.candidates[["query_id", "product_id"]], ds.products, ds.queries, "bienc",
                                  client=client)
        else:
            s = score_pairs(ds.candidates[["query_id", "product_id"]], ds.products, ds.queries, progress=True,
                            cache_dir=default_cache_dir())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        s.to_parquet(out_path, index=False)
    export_query_encoder(default_biencoder(), default_cache_dir())  # how `ltr serve` embeds a new query
    return s


# --- engagement windows ----------------------------------------------------------------------------

def engagement_cutoff(impressions: pd.DataFrame | str | Path, label_days: int) -> pd.Timestamp:
    """Features are as of the cutoff; engagement labels come from the last `label_days` days.

    `impressions`: the log as a frame, or its parquet file (scanned, never loaded whole)."""
    from features.engagement_sql import log_time_range
    last = impressions["ts"].max() if isinstance(impressions, pd.DataFrame) else log_time_range(impressions)[1]
    end = last.floor("D") + pd.Timedelta(days=1)
    return end - pd.Timedelta(days=label_days)


def purchase_targets(ds: Dataset, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Purchase labels for the Hopit.ai arm: smoothed purchase rate of each pair before the cutoff, in [0,1]."""
    from features.engagement_sql import pair_counts_sql
    c = pair_counts_sql(ds.impressions_path, end=cutoff)
    rate = smoothed_rate(c["purchases"], c["impressions"], smoothing=1.0, prior=0.01)
    c["score"] = (rate / rate.max()).clip(0, 1)
    return c[["query_id", "product_id", "score"]]


# --- stage 4: Feast features -----------------------------------------------------------------------

def stage_features(cfg: RunConfig, paths: RunPaths, ds_dir: Path, content: pd.DataFrame) -> Any:
    from features.build import build_features
    from features.store import LtrStore
    pilot = pilot_seed(cfg, paths)
    key = _digest({"ds": str(ds_dir), "f": cfg.features.model_dump(mode="json"), "n": len(content),
                   "c": float(np.nansum(content.select_dtypes("number").to_numpy())),
                   "labels": paths.labels.stat().st_mtime if paths.labels.exists() else 0}
                  | ({"pilot": sorted(pilot)} if pilot is not None else {}))
    if not _stamp_ok(paths.features, key):
        _log("stage features: lexical, product, engagement, content and label tables")
        judgments = None
        if pilot is not None:  # human labels win in the label view: only the ones the pilot paid for go in
            jud = Dataset.load(ds_dir).judgments
            judgments = jud[jud["query_id"].isin(pilot)]
        build_features(ds_dir, paths.features, cfg.features, ce_scores=content, labels=paths.labels,
                       judgments=judgments)
        store = LtrStore(paths.features, cfg.features).apply()
        _log("stage features: feast apply done; bulk materialize into the online store")
        rows = store.bulk_materialize()
        _log(f"  materialized rows per view: {rows}")
        _stamp(paths.features, key)
    else:
        _log("stage features: up to date")
        store = LtrStore(paths.features, cfg.features)
    return store


# --- stage 5: the training frame -------------------------------------------------------------------

def stage_training_frame(cfg: RunConfig, paths: RunPaths, ds: Dataset, store: Any, cutoff: pd.Timestamp,
                         extra: list[pd.DataFrame] = ()) -> pd.DataFrame:
    """Features and labels point-in-time from Feast, engagement labels after the cutoff, truth for eval."""
    ent = ds.candidates[["query_id", "product_id"]].copy()
    ent["event_timestamp"] = cutoff
    _log(f"stage training set: get_historical_features for {len(ent)} pairs as of {cutoff}")
    frame = store.get_training_frame(ent, labels=True)
    frame = frame.rename(columns={"label_score": "content_score"})
    frame = frame.drop(columns=[c for c in ("label_grade", "labeler", "labeler_kind") if c in frame.columns])
    from features.engagement_sql import pair_counts_sql  # the log is scanned, never loaded whole
    after = pair_counts_sql(ds.impressions_path, start=cutoff) if ds.has_engagement else None
    if after is not None:
        frame = frame.merge(after, on=["query_id", "product_id"], how="left")
        for c in COUNT_COLUMNS:
            frame[c] = frame[c].fillna(0.0)
            frame[f"heldout_{c}"] = frame[c]
    for e in extra:
        frame = frame.merge(e, on=["query_id", "product_id"], how="left")
    truth = ds.load_truth()
    grades = truth if truth is not None else ds.judgments[["query_id", "product_id", "grade"]]
    frame = frame.merge(grades[["query_id", "product_id", "grade"]], on=["query_id", "product_id"], how="left")
    if grade_source(ds) == "labels":  # no human grade anywhere: evaluate against the labeler (reports say so)
        frame["grade"] = (frame["content_score"] * 3).round()
    frame = pilot_grades(cfg, paths, frame, ds)
    if "segment" in ds.queries.columns:
        frame = frame.merge(ds.queries[["query_id", "segment"]], on="query_id", how="left")
    frame = frame.sort_values(["query_id", "product_id"]).reset_index(drop=True)
    frame["content_score"] = frame["content_score"].fillna(frame["content_score"].median())
    frame.to_parquet(paths.frame, index=False)
    return frame


# --- stages 6-9: tune, train + register, experiments, evaluate ------------------------------------

@dataclass
class Run:
    """What the stages hand each other; `summary` is what the job reports (reports/summary.json)."""

    cfg: RunConfig
    paths: RunPaths
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn, *args, **kwargs):
        t = time.time()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.time() - t, 1)
        return out


def stage_tune(cfg: RunConfig, paths: RunPaths, frame: pd.DataFrame) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """Optuna over α, β, blend and model parameters on the training queries; returns (result, train, test)."""
    from ltr.rankers import split_frame
    from ltr.tracking import frame_fingerprint, setup_tracking
    from ltr.tuning import tune
    setup_tracking(cfg.tracking.uri, cfg.tracking.experiment)
    train_cfg = cfg.train.model_copy(update={"seed": cfg.seed})
    # one study per training frame: re-running the same job resumes it, a changed frame starts a new one
    tune_cfg = cfg.tune.model_copy(update={"study_name": f"{cfg.tune.study_name}-{frame_fingerprint(frame)[:10]}"})
    _log(f"stage tune: Optuna study '{tune_cfg.study_name}' ({tune_cfg.n_trials} trials)")
    train_part, test_part = split_frame(frame, "query_id", [1 - train_cfg.test_fraction, train_cfg.test_fraction],
                                        cfg.seed)
    tres = tune(train_part, train_cfg, tune_cfg, track=cfg.tracking.enabled, out_dir=paths.reports)
    return tres, train_part, test_part


def stage_train_register(cfg: RunConfig, tres: Any, train_part: pd.DataFrame, test_part: pd.DataFrame,
                         extra_params: dict[str, str], paths: RunPaths | None = None,
                         ds: Dataset | None = None, cutoff: pd.Timestamp | None = None) -> dict[str, Any]:
    """The champion candidate at the operating point, evaluated on held-out queries, logged and registered
    as a self-contained model (`ltr.tracking.ServingParts`): its serving cross-encoder, bi-encoder identity,
    feature service, label transform and data fingerprints travel with it.

    Which cross-encoder scores new pairs: fold 0's model (`paths.ce / "llm_fold0"`), recorded as such.
    The training frame's `ce_score` is cross-fitted: half the rows were scored by fold 0's model, half
    by fold 1's, and the trees learnt from that mix. A third model fitted on all labelled pairs would be
    the stronger scorer, but its score distribution is one the trees never saw and it would cost another
    fine-tune; either fold model produced half of the scores the trees did see. Fold 0 is the cheap,
    honest choice, and the manifest says so. Without `paths` (or without that folder) nothing is
    recorded, and evaluate / serve then refuse a ce_score model unless given a cross-encoder explicitly.

    The new version becomes @champion only through the promotion gate (ltr/promotion.py: content NDCG not
    worse, engagement estimated from `ds`'s log after `cutoff` not below -1% at 95%), else @challenger.
    """
    from ltr.cold_route import evaluate_cold_routed, fit_cold_route
    from ltr.tracking import ServingParts, file_digest, log_training_run, register_model
    from ltr.train import train_and_evaluate
    op = tres.tuned
    _log(f"stage train: XGBoost LambdaMART at the operating point alpha={op.alpha:.3g} beta={op.beta:.3g} "
         f"blend={op.blend_weight:.3g}")
    best = tres.best_config
    if cfg.compute.engine == "dask" and best.model.kind == "xgboost":  # same trees, trained on the cluster
        best = best.model_copy(update={"model": best.model.model_copy(update={"kind": "xgboost_dask"})})
    res = train_and_evaluate(train_part, best, test_frame=test_part)
    # the cold route is chosen on the training queries alone (cross-validated), then measured on the test ones
    route = fit_cold_route(train_part, tres.best_config, res.features)
    if route is not None:
        _log(f"stage train: cold route '{route.scorer_.name}' (cross-validated cold {route.validation_['metric']} "
             f"on {route.validation_['n_queries']} training queries: {route.validation_['scores']})")
        res.metrics.update(evaluate_cold_routed(res.model, route, test_part, best))
    if paths is not None:
        _write_test_scores(paths, res.model, route, test_part, best)
    ce_dir = paths.ce / "llm_fold0" if paths is not None else None
    ce_dir = ce_dir if ce_dir is not None and (ce_dir / "config.json").exists() else None
    ds_dir = Path(extra_params["dataset"]) if "dataset" in extra_params else None
    prints = {f"dataset/{p.name}": file_digest(p) for p in sorted(ds_dir.glob("*.parquet"))} if ds_dir else {}
    if paths is not None and paths.labels.exists():
        prints["labels"] = file_digest(paths.labels)
    parts = ServingParts(cross_encoder=ce_dir, data_fingerprints=prints, cold_route=route,
                         cross_encoder_int8=cfg.tracking.cross_encoder_int8,
                         cross_encoder_choice="fold 0 of 2 cross-fitted models (fine-tuned on fold 1's "
                                              "queries); it scored half the training rows' ce_score")
    run_id, model_uri = log_training_run(res, run_name="champion-candidate", label_source=cfg.labels.backend,
                                         extra_params=extra_params, serving=parts)
    name = cfg.tracking.model_name
    version = register_model(model_uri, name, alias=None) if model_uri else None
    promotion = None
    if version is not None:
        from ltr.promotion import gate
        decision = gate(name, version, res.model, test_part, ds, cutoff, cfg.promotion, best)
        promotion = decision.as_dict()
        _log(f"stage promote: {name} v{version} -> @{decision.alias}: {decision.reason}")
    alias = promotion["alias"] if promotion is not None else "champion"
    return {"operating_point": op.model_dump(), "test_metrics": res.metrics,
            "model_uri": f"models:/{name}@{alias}", "model_version": version, "promotion": promotion,
            "mlflow_run_id": run_id, "cold_route": route.validation_ if route is not None else None}


def _write_test_scores(paths: RunPaths, model: Any, route: Any, test_part: pd.DataFrame, best: Any) -> None:
    """The registered model's scores of every test pair, warm and cold (engagement absent, through its cold
    route), and the training config it was fitted with: what benchmarks compare per query
    (bench/bench_label_budget.py) without re-fitting the champion."""
    from ltr.cold_route import routed_scores
    from ltr.train import mask_engagement
    cold = mask_engagement(test_part)
    out = test_part[["query_id", "product_id"]].copy()
    out["champion_warm"] = np.asarray(model.predict(test_part, missing="nan"), dtype="float64")
    out["champion_cold"] = routed_scores(model, route, cold, cold[best.columns.query_id].to_numpy())[0]
    paths.reports.mkdir(parents=True, exist_ok=True)
    out.to_parquet(paths.reports / "test_scores.parquet", index=False)
    (paths.reports / "champion_config.json").write_text(best.model_dump_json(indent=2) + "\n")


def grade_source(ds: Dataset) -> str:
    """What evaluation grades come from: truth (evaluation only), human judgments, or, for a catalog with a
    query log and nothing judged, the labeler's own grades (a measure of agreement with it, not truth)."""
    return "truth" if (ds.root / "truth.parquet").exists() else "judgments" if len(ds.judgments) else "labels"


def engagement_source(ds: Dataset) -> str:
    """Where the run's engagement comes from, said in every report: a warm metric is only as honest as this."""
    if not ds.engagement_simulated:
        return "logged"
    meta = ds.metadata.get("engagement", {})
    if ds.metadata.get("source") == "world":
        return "simulated by the built-in world's click model (its attractiveness mixes true relevance in)"
    if meta.get("relevance_source") == "judgments":
        return "simulated from the judgments the run is evaluated on: warm metrics leak them"
    return f"simulated ({meta.get('relevance_source', 'grade-independent')})"


def stage_cold_start(cfg: RunConfig, tres: Any, train_part: pd.DataFrame, test_part: pd.DataFrame,
                     champion_metrics: dict[str, float], route: dict[str, Any] | None = None) -> dict[str, Any]:
    """The champion on the held-out queries warm and cold (engagement absent), beside the two models a cold
    query could otherwise get: the content-only arm and the zero-shot bi-encoder's order. `champion_cold`
    is the registered model as it scores a cold query (through its cold route, `route`: its choice and
    validation figures); `champion_cold_unrouted` is the trees alone."""
    from ltr.data import metrics as M
    from ltr.train import content_only_config, evaluate_ranker, fit_ranker
    k = f"ndcg@{cfg.train.k}"
    ccfg = content_only_config(tres.best_config)
    content_only, _ = evaluate_ranker(fit_ranker(train_part, ccfg), test_part, ccfg)
    trees = champion_metrics.get(f"{k}/cold")
    out = {"champion_warm": champion_metrics.get(k), "champion_cold": champion_metrics.get(f"{k}/cold_routed", trees),
           "champion_cold_unrouted": trees, "cold_route": route, "content_only": content_only.get(k), "metric": k,
           "n_queries": champion_metrics.get("n_queries")}
    if "bienc_cos" in test_part.columns:
        ok = test_part["bienc_cos"].notna()
        out["bienc_zero_shot"] = M.evaluate(test_part[ok], test_part.loc[ok, "bienc_cos"].to_numpy(),
                                            k=cfg.train.k, metrics=())[k]
        out["zero_shot_rule_met"] = bool(out["champion_cold"] is not None
                                         and out["champion_cold"] >= out["bienc_zero_shot"])
    out["cold_rule_met"] = bool(out["champion_cold"] is not None and out["champion_cold"] >= out["content_only"])
    _log(f"stage cold start: {k} warm {out['champion_warm']:.4f}, cold {out['champion_cold']:.4f} (trees alone "
         f"{trees:.4f}); content-only {out['content_only']:.4f}; zero-shot bi-encoder "
         f"{out.get('bienc_zero_shot', float('nan')):.4f}")
    return out


def stage_experiments(cfg: RunConfig, paths: RunPaths, frame: pd.DataFrame, tuned: Any, ds: Dataset,
                      ds_dir: Path) -> dict[str, Any]:
    """The paper's arms over seeds at the tuned operating point: reports/experiments.md|json."""
    from ltr.experiments import run_experiments
    ecfg = cfg.experiments.model_copy(update={"tuned": tuned})
    clicks = None
    if "f" in ecfg.arms and ds.impressions_path is not None:  # group (f) trains on the raw impressions
        from ltr.unbiased import ClickLog
        clicks = ClickLog.from_dataset(ds, engagement_cutoff(ds.impressions_path, cfg.train_window.label_days))
    md, result = run_experiments(lambda _seed: frame, ecfg, track=cfg.tracking.enabled,
                                 notes=[f"dataset: {ds_dir} (engagement "
                                        f"{'simulated' if ds.engagement_simulated else 'logged'})"], clicks=clicks)
    (paths.reports / "experiments.md").write_text(md)
    (paths.reports / "experiments.json").write_text(json.dumps({**result, **stamp()}, indent=2) + "\n")
    print(md)
    return result


def stage_evaluate(cfg: RunConfig, paths: RunPaths, model_uri: str) -> dict[str, Any] | None:
    """The champion on a judged dataset it never saw (engagement features absent), when one is there."""
    esci = cfg.evaluate.esci_dir or default_esci_dir()
    if not cfg.evaluate.enabled or esci is None or not Path(esci).exists() or not cfg.tracking.enabled:
        return None
    from ltr.evaluate import evaluate_dataset
    _log(f"stage evaluate: champion on {esci} (never seen in training; engagement features absent)")
    ev = evaluate_dataset(esci, model_uri, paths.reports / "evaluate_esci.json", ce_path=paths.ce / "llm_fold0")
    return {k: v for k, v in ev.items() if not isinstance(v, (dict, list))}


def stage_content(cfg: RunConfig, paths: RunPaths, ds: Dataset, cutoff: pd.Timestamp, with_purchase_ce: bool
                  ) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Content features (bi-encoder cosine, cross-fitted cross-encoder) and the experiment-only purchase CE."""
    labels = pd.read_parquet(paths.labels)
    content = bi_encoder_scores(ds, paths, dask_client_of(cfg))
    ce = stage_cross_encoder(cfg, paths, ds, labels[["query_id", "product_id", "score"]], "llm")
    content = content.merge(ce, on=["query_id", "product_id"], how="left")
    extra = [stage_cross_encoder(cfg, paths, ds, purchase_targets(ds, cutoff), "purchase")] if with_purchase_ce else []
    return content, extra


# --- the whole job ---------------------------------------------------------------------------------

def dask_client_of(cfg: RunConfig) -> Any:
    """The job's Dask client when `compute.engine: dask` (opened once by `run_all`), else None."""
    if cfg.compute.engine != "dask":
        return None
    from ltr.data.engine import current_client
    return current_client(cfg.compute.scheduler_address)


def run_all(cfg: RunConfig, out: str | Path, skip_experiments: bool = False) -> dict[str, Any]:
    """Run the main job end to end; returns a summary and writes reports under OUT/reports. With
    `compute.engine: dask` the whole job shares one Dask client: labels (grader), bi- and cross-encoder
    scoring and the champion's training run on the cluster; tuning trials stay in this process."""
    if cfg.compute.engine != "dask":
        return _run_stages(cfg, out, skip_experiments)
    from ltr.data.engine import dask_client
    with dask_client(cfg.compute):
        return _run_stages(cfg, out, skip_experiments)


def _run_stages(cfg: RunConfig, out: str | Path, skip_experiments: bool) -> dict[str, Any]:
    t0 = time.time()
    run = Run(cfg, RunPaths(Path(out)))
    paths = run.paths
    paths.reports.mkdir(parents=True, exist_ok=True)
    ds_dir = run.timed("dataset", stage_dataset, cfg, paths)
    ds = Dataset.load(ds_dir)
    label_summary = run.timed("labels", stage_labels, cfg, paths, ds_dir)
    cutoff = engagement_cutoff(ds.impressions_path, cfg.train_window.label_days)
    content, extra = run.timed("cross_encoder", stage_content, cfg, paths, ds, cutoff,
                               "e" in cfg.experiments.arms and not skip_experiments)
    store = run.timed("features", stage_features, cfg, paths, ds_dir, content)
    frame = run.timed("training_frame", stage_training_frame, cfg, paths, ds, store, cutoff, extra=extra)
    # the Hopit.ai column is an experiment arm, never a feature of the production model
    prod_frame = frame.drop(columns=[c for c in frame.columns if c.startswith("ce_purchase")])
    tres, train_part, test_part = run.timed("tune", stage_tune, cfg, paths, prod_frame)
    run.summary = {"run_dir": str(paths.root), "dataset": str(ds_dir), "cutoff": str(cutoff),
                   "engagement_simulated": ds.engagement_simulated, "labels": label_summary.get("calibration", {})}
    run.summary.update(run.timed("train_register", stage_train_register, cfg, tres, train_part, test_part,
                                 {"dataset": str(ds_dir), "cutoff": str(cutoff)}, paths=paths, ds=ds,
                                 cutoff=cutoff))
    run.summary["engagement_source"] = engagement_source(ds)
    run.summary["grade_source"] = grade_source(ds)
    if "candidates" in ds.metadata:
        run.summary["mined_candidates"] = ds.metadata["candidates"]
    run.summary["cold_start"] = run.timed("cold_start", stage_cold_start, cfg, tres, train_part, test_part,
                                          run.summary["test_metrics"], run.summary.pop("cold_route", None))
    (paths.reports / "train_metrics.json").write_text(json.dumps(run.summary, indent=2, default=str) + "\n")
    if not skip_experiments:
        result = run.timed("experiments", stage_experiments, cfg, paths, frame, tres.tuned, ds, ds_dir)
        run.summary["experiments_claim"] = result.get("claim")
    ev = run.timed("evaluate", stage_evaluate, cfg, paths, run.summary["model_uri"])
    if ev is None:
        run.timings.pop("evaluate")
    else:
        run.summary["evaluate_esci"] = ev
    run.summary["timings_s"] = run.timings
    run.summary["total_s"] = round(time.time() - t0, 1)
    run.summary.update(stamp())
    (paths.reports / "summary.json").write_text(json.dumps(run.summary, indent=2, default=str) + "\n")
    return run.summary


def default_esci_dir() -> Path | None:
    """$LTR_ESCI_DIR as given, else the shared sample when it is there."""
    import os

    from .data.esci import esci_sample_dir
    p = esci_sample_dir()
    return p if os.environ.get("LTR_ESCI_DIR") or p.exists() else None
