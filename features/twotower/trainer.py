"""Fine-tuning the bi-encoder as a two-tower retriever on graded, levelled pairs, stage by stage.

Why it trains this way:
- The loss is in-batch negatives plus each anchor's mined hard negative (`losses.py`): retrieval ranks a
  query against the whole catalog, and the hard negatives carry what zero-shot gets wrong.
- A curriculum (`curriculum.py`): the stages of `TwoTowerConfig.stages` in order, easy to hard, on one
  learning-rate schedule over all steps; the control is the same triplets shuffled into one stage.
- The bottom layers are frozen and their output cached (`tower.py`): a CPU budget of a few hundred steps
  goes into the top layers.
- Validation is query-grouped (no query in both training and validation) with early stopping on NDCG@k as
  `ltr.data.metrics` computes it. A stage ends when validation stops improving for `patience` evaluations,
  and the next stage starts from the best weights so far; the best checkpoint is saved.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ltr.data.encoder import default_encoder_path
from ltr.data.metrics import ndcg_per_query

from ..text import pair_texts
from .artifact import FORMAT_VERSION, save_two_tower
from .config import TwoTowerConfig
from .curriculum import Stage, stages
from .losses import in_batch_loss, negative_mask
from .tower import BottomCache, Tower, load_tower

# --- input checks and the query split ------------------------------------------------------------

def _grades(df: pd.DataFrame, name: str) -> pd.Series:
    """Whole grades 0..3 from `grade`, else from `score` in [0, 1] (grade = round(3 * score))."""
    if "grade" in df.columns:
        g = pd.to_numeric(df["grade"], errors="coerce")
        if g.isna().any() or ((g < 0) | (g > 3) | (g != g.round())).any():
            raise ValueError(f"{name} column 'grade' must hold whole numbers 0..3. Fix: map labels to "
                             "ESCI grades (E/S/C/I = 3/2/1/0).")
        return g.astype(int)
    if "score" in df.columns:
        s = pd.to_numeric(df["score"], errors="coerce")
        if s.isna().any() or ((s < 0) | (s > 1)).any():
            raise ValueError(f"{name} column 'score' must lie in [0, 1]. Fix: pass the labels table's score.")
        return (s * 3).round().astype(int)
    raise ValueError(f"{name} needs a 'grade' (0..3) or 'score' ([0, 1]) column. Fix: pass graded pairs.")


def _check_pairs(pairs_df: pd.DataFrame, cfg: TwoTowerConfig, name: str = "pairs_df") -> pd.DataFrame:
    """query_id, product_id, grade, level, _stage; one-line errors naming the field and the fix."""
    if not isinstance(pairs_df, pd.DataFrame):
        raise TypeError(f"{name} must be a DataFrame, got {type(pairs_df).__name__}.")
    missing = [c for c in ("query_id", "product_id") if c not in pairs_df.columns]
    if missing or pairs_df.empty:
        raise ValueError(f"{name} has no rows or lacks column(s) {missing}. Fix: pass graded (query_id, "
                         "product_id) pairs, e.g. the labels of ltr.retrieval.mine's selected pairs.")
    df = pairs_df[["query_id", "product_id"]].astype(str).assign(grade=_grades(pairs_df, name).to_numpy())
    if df.duplicated(["query_id", "product_id"]).any():
        raise ValueError(f"{name} has duplicate (query_id, product_id) rows. Fix: one label per pair.")
    if "level" not in pairs_df.columns:
        if cfg.curriculum:
            raise ValueError(f"{name} lacks column 'level' that the curriculum stages by. Fix: pass the mined "
                             "pairs (ltr.retrieval.mine) or set curriculum: false.")
        first = cfg.stages[0][0]
        return df.assign(level=first, _stage=0).reset_index(drop=True)
    stage_of = cfg.stage_of()
    lv = pairs_df["level"].to_numpy()
    unknown = sorted({str(v) for v in lv if v not in stage_of})
    if unknown:
        raise ValueError(f"{name} has level(s) {unknown[:5]} that no stage lists. Fix: add them to "
                         f"two_tower.stages (now {cfg.stages}) or drop those pairs.")
    return df.assign(level=lv, _stage=[stage_of[v] for v in lv]).reset_index(drop=True)


def _split(pairs: pd.DataFrame, val_pairs: pd.DataFrame | None, cfg: TwoTowerConfig,
           seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training pairs, validation pairs): the given validation table (its queries leave training), else a
    seeded `val_fraction` of the queries."""
    if val_pairs is not None:
        val = _check_pairs(val_pairs.drop(columns=["level"], errors="ignore"),
                           cfg.model_copy(update={"curriculum": False}), "val_pairs")
        train = pairs[~pairs["query_id"].isin(set(val["query_id"]))].reset_index(drop=True)
    else:
        uq = np.array(sorted(pairs["query_id"].unique()))
        np.random.default_rng(seed).shuffle(uq)
        n_val = min(max(1, int(round(len(uq) * cfg.val_fraction))), len(uq) - 1)
        is_val = pairs["query_id"].isin(set(uq[:n_val]))
        train, val = pairs[~is_val].reset_index(drop=True), pairs[is_val].reset_index(drop=True)
    if train["query_id"].nunique() < 1 or val.empty:
        raise ValueError("pairs_df needs labelled pairs of at least 2 queries (training and validation). "
                         "Fix: label more queries.")
    return train, val


def _fingerprint(df: pd.DataFrame) -> str:
    h = hashlib.sha1(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


# --- validation and early stopping ---------------------------------------------------------------

class _Validation:
    """Validation NDCG@k, its history and the best weights so far (the starting point competes too)."""

    def __init__(self, tower: Tower, val: pd.DataFrame, qs: list[str], ts: list[str], cfg: TwoTowerConfig):
        self.tower, self.val, self.qs, self.ts, self.cfg = tower, val, qs, ts, cfg
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"ndcg": -1.0, "step": 0, "state": None}
        self.stale = 0
        self.check(0, -1, 0.0)

    def ndcg(self) -> float:
        q = self.tower.embed(self.qs, self.cfg.batch_size_eval)
        d = self.tower.embed(self.ts, self.cfg.batch_size_eval)
        per_q = ndcg_per_query(self.val["query_id"].to_numpy(), (q * d).sum(1), self.val["grade"].to_numpy(),
                               self.cfg.eval_k, self.cfg.eval_gains, self.val["product_id"].to_numpy())
        return float(np.nanmean(per_q)) if per_q.notna().any() else 0.0

    def check(self, step: int, stage: int, train_loss: float) -> bool:
        """Validate now; True when this stage has run out of patience."""
        v = self.ndcg()
        self.history.append({"step": step, "stage": stage, "val_ndcg": v, "train_loss": train_loss})
        if v > self.best["ndcg"] + 1e-6:
            self.best = {"ndcg": v, "step": step, "state": {id(p): p.detach().clone()
                                                             for p in self.tower.trainable()}}
            self.stale = 0
            return False
        self.stale += 1
        return self.stale >= self.cfg.patience

    def restore_best(self) -> None:
        with torch.no_grad():
            for p in self.tower.trainable():
                p.copy_(self.best["state"][id(p)])
        self.stale = 0


# --- the training loop ---------------------------------------------------------------------------

def _optimizer(params: list[torch.nn.Parameter], cfg: TwoTowerConfig, total: int):
    """AdamW with linear warm-up, then linear decay to 0 over all stages' steps (one schedule)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return opt, sched


class _Batches:
    """Texts and integer codes of the training pairs, so a batch of triplets becomes tensors cheaply."""

    def __init__(self, train: pd.DataFrame, qs: list[str], ts: list[str], roles_pos: np.ndarray) -> None:
        self.qs, self.ts = qs, ts
        self.qcode = torch.from_numpy(pd.factorize(train["query_id"])[0])
        self.pcode = torch.from_numpy(pd.factorize(train["product_id"])[0])
        self.is_pos = torch.from_numpy(roles_pos)

    def step(self, tower: Tower, trip: pd.DataFrame, cfg: TwoTowerConfig, opt, sched) -> float:
        pos = trip["pos"].to_numpy()
        neg = trip["neg"].to_numpy() if cfg.hard_negatives else np.full(len(trip), -1)
        has_neg = neg >= 0
        tower.model.train()
        q = tower.forward([self.qs[i] for i in pos])
        d_pos = tower.forward([self.ts[i] for i in pos])
        d_neg, docs = None, torch.from_numpy(pos)
        valid = torch.ones(len(pos), dtype=torch.bool)
        if has_neg.any():
            d_neg = torch.zeros_like(d_pos)
            d_neg[torch.from_numpy(has_neg)] = tower.forward([self.ts[i] for i in neg[has_neg]])
            docs = torch.cat([docs, torch.from_numpy(np.where(has_neg, neg, 0))])
            valid = torch.cat([valid, torch.from_numpy(has_neg)])
        pi = torch.from_numpy(pos)
        mask = negative_mask(self.qcode[pi], self.qcode[docs], self.pcode[pi], self.pcode[docs],
                             self.is_pos[docs], valid)
        loss = in_batch_loss(q, d_pos, d_neg, cfg.scale, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.trainable(), 1.0)
        opt.step()
        sched.step()
        return float(loss.item())


def _n_batches(n: int, size: int) -> int:
    return math.ceil(n / size) if n >= 2 else 0


def _train(tower: Tower, plan: list[Stage], batches: _Batches, val: _Validation, cfg: TwoTowerConfig,
           rng: np.random.Generator, progress: bool) -> tuple[int, list[dict[str, Any]]]:
    """Every stage in order, `epochs_per_stage` epochs each; returns (steps, per-stage record). Each step's
    record lists the levels of the triplets it trained on: the order the curriculum promised."""
    per_epoch = [_n_batches(len(s.triplets), cfg.batch_size) for s in plan]
    total = sum(per_epoch) * cfg.epochs_per_stage
    opt, sched = _optimizer(tower.trainable(), cfg, max(1, total))
    step, record = 0, []
    bar = tqdm(total=total, disable=not progress, desc="fine-tune two-tower")
    for stage, n_b in zip(plan, per_epoch):
        eval_at = {int(round(n_b * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}
        rec = {"stage": stage.index, "levels": [str(v) for v in stage.levels], "n_triplets": len(stage.triplets),
               "steps": 0, "early_stopped": False, "step_levels": []}
        losses: list[float] = []
        for epoch in range(cfg.epochs_per_stage if n_b else 0):
            trip = stage.triplets if epoch == 0 else stage.triplets.sample(frac=1.0, random_state=rng.integers(2**31))
            for b in range(n_b):
                part = trip.iloc[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                if len(part) < 2:
                    continue
                losses.append(batches.step(tower, part, cfg, opt, sched))
                step += 1
                rec["steps"] += 1
                rec["step_levels"].append(sorted({str(v) for v in part["level"]}))
                bar.update(1)
                bar.set_postfix(stage=stage.index, loss=f"{np.mean(losses[-20:]):.4f}")
                if ((b + 1) in eval_at and val.check(step, stage.index, float(np.mean(losses[-n_b:])))
                        and cfg.early_stopping):
                    rec["early_stopped"] = True
                    break
            if rec["early_stopped"]:
                break
        if cfg.early_stopping:
            val.restore_best()
        rec["best_val_ndcg"] = val.best["ndcg"]
        record.append(rec)
    bar.close()
    return step, record


# --- the public entry point ----------------------------------------------------------------------

def _metadata(cfg: TwoTowerConfig, seed: int, base: Path, train: pd.DataFrame, val: pd.DataFrame,
              metrics: dict[str, Any], history: list[dict[str, Any]], record: list[dict[str, Any]]) -> dict[str, Any]:
    """What the saved folder says about itself; the version is a hash of config, seed and data."""
    cfg_json = cfg.model_dump(mode="json")
    fp = {"train": _fingerprint(train[["query_id", "product_id", "grade", "level"]]),
          "val": _fingerprint(val[["query_id", "product_id", "grade"]])}
    key = json.dumps([cfg_json, seed, fp], sort_keys=True, default=str)
    return {"format_version": FORMAT_VERSION, "kind": "two-tower",
            "version": "tt-" + hashlib.sha1(key.encode()).hexdigest()[:10],
            "base_model": str(base), "seed": seed, "config": cfg_json, "data_fingerprint": fp,
            "metrics": metrics, "history": history, "stages": record,
            "val_query_ids": sorted(val["query_id"].unique()), "created_at": pd.Timestamp.now(tz="UTC").isoformat()}


def fit_two_tower(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                  out_dir: str | Path, cfg: TwoTowerConfig | dict | None = None, seed: int = 0,
                  val_pairs: pd.DataFrame | None = None, cache: BottomCache | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Fine-tune the bi-encoder on graded pairs (query_id, product_id, grade 0..3 or score in [0, 1],
    level) and save it to `out_dir` as a bi-encoder dir (`load_two_tower` / `BiEncoder(out_dir)`).

    `val_pairs` (query_id, product_id, grade or score) are the early-stopping queries, e.g. human
    judgments; their queries leave the training pairs. Without it a seeded `val_fraction` of the queries
    is held out. `cache`: a `BottomCache` shared across trainings on the same base (see `tower.py`).
    Returns the metadata (also in out_dir/ltr_two_tower.json); logged to MLflow when a run is active.
    """
    cfg = cfg if isinstance(cfg, TwoTowerConfig) else TwoTowerConfig.model_validate(cfg or {})
    t0 = time.time()
    pairs = _check_pairs(pairs_df, cfg)
    train, val = _split(pairs, val_pairs, cfg, seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = Path(cfg.base_model) if cfg.base_model else default_encoder_path()
    tower = load_tower(base, cfg.freeze_layers, cfg.max_length, cache, cfg.cache_frozen)
    qs, ts = pair_texts(train, products_df, queries_df, **cfg.text_kwargs())
    vq, vt = pair_texts(val, products_df, queries_df, **cfg.text_kwargs())
    if tower.use_cache:
        tower.cache.warm(list(dict.fromkeys(qs + ts + vq + vt)), cfg.batch_size_eval, progress)
    plan = stages(train, cfg, rng)
    batches = _Batches(train, qs, ts, train["grade"].to_numpy() >= cfg.positive_min_grade)
    val_state = _Validation(tower, val, vq, vt, cfg)
    steps, record = _train(tower, plan, batches, val_state, cfg, rng, progress)
    tower.model.eval()
    metrics = {"val_ndcg_at_k": val_state.best["ndcg"] if cfg.early_stopping else val_state.history[-1]["val_ndcg"],
               "val_ndcg_at_k_before": val_state.history[0]["val_ndcg"],
               "best_step": val_state.best["step"] if cfg.early_stopping else steps, "steps": steps,
               "n_train_pairs": len(train), "n_val_pairs": len(val),
               "n_train_queries": int(train["query_id"].nunique()),
               "n_val_queries": int(val["query_id"].nunique()),
               "n_triplets": int(sum(len(s.triplets) for s in plan)), "train_seconds": round(time.time() - t0, 2)}
    meta = _metadata(cfg, seed, base, train, val, metrics, val_state.history, record)
    out = Path(out_dir)
    save_two_tower(tower.model, tower.tok, meta, base, out)
    meta["path"] = str(out.resolve())
    _log_mlflow(meta, out)
    return meta


def _log_mlflow(meta: dict[str, Any], out_dir: Path) -> None:
    """Params, metrics (and the validation curve) and the model dir as artifact `two_tower/`."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return
    if mlflow.active_run() is None:
        return
    mlflow.log_params({f"tt.{k}": json.dumps(v) if isinstance(v, (list, tuple)) else v
                       for k, v in meta["config"].items()})
    mlflow.log_params({"tt.version": meta["version"], "tt.seed": meta["seed"]})
    mlflow.log_metrics({f"tt.{k}": float(v) for k, v in meta["metrics"].items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for h in meta["history"]:
        mlflow.log_metric("tt.val_ndcg", h["val_ndcg"], step=int(h["step"]))
    mlflow.log_artifacts(str(out_dir), artifact_path="two_tower")


__all__ = ["fit_two_tower"]
