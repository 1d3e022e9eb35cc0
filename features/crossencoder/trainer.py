"""Fine-tuning a cross-encoder on (query, product, score in [0, 1]) labels, saved as a HF classifier.

Why it trains this way:
- *Listwise per query* by default (softmax cross-entropy against softmax(T * score)): only the order
  within a query matters for ranking, and a pointwise MSE on a few thousand pairs spends the model's
  capacity on calibrating scores across queries (measured here: MSE fine-tunes lose to the zero-shot
  bi-encoder). An optional distillation term keeps the bi-encoder's ranking signal.
- Lower layers are frozen and their output cached (`frozen.py`), sequences are short (64 tokens): a CPU
  budget of a few dozen steps has to go into the layers that learn.
- A fresh cls head is first fitted on frozen features (linear probe, then fine-tune); the segment-cosine
  head starts at the bi-encoder's ranking and gets a monotone Platt map folded in after training, so
  sigmoid(logit) is a calibrated, non-saturated score.
- Validation is query-grouped (no query in both train and validation) with early stopping on NDCG@k as
  `ltr.data.metrics` computes it, so the figure logged here is the one the rest of the project reports.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ltr.data.encoder import default_encoder_path
from ltr.data.metrics import ndcg_per_query

from ..text import pair_texts
from .artifact import FORMAT_VERSION, _atomic_save
from .base_model import _is_segment, load_base_cross_encoder
from .batching import _collate, _length_batches, _tokenize_pairs
from .config import CrossEncoderConfig
from .frozen import _freeze, _frozen_states, _pooled_features, _top_forward

# --- validation metric ---------------------------------------------------------------------------

def _gain(score: np.ndarray) -> np.ndarray:
    """Exponential gain on the 0..3 grade scale: 2^(3*score) - 1."""
    return np.power(2.0, 3.0 * np.asarray(score, float)) - 1.0


def _val_ndcg(qid: Sequence[Any], score_labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k of the validation queries by `ltr.data.metrics`' rule, with gains 2^(3*score) - 1.

    `ndcg_per_query` takes whole-number grades and a {grade: gain} mapping, so each distinct continuous
    gain becomes a grade of its own. Queries with nothing relevant have no NDCG and are left out of the
    mean; if no query has anything relevant the mean is 0.0, so early stopping still has a number.
    """
    levels, grade = np.unique(_gain(score_labels), return_inverse=True)
    per_query = ndcg_per_query(np.asarray(qid), scores, grade, k, gains=dict(enumerate(levels.tolist())))
    return float(np.nanmean(per_query)) if per_query.notna().any() else 0.0


# --- input checks and the query split ------------------------------------------------------------

def _check_pairs(pairs_df: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(pairs_df, pd.DataFrame):
        raise TypeError(f"pairs_df must be a DataFrame, got {type(pairs_df).__name__}.")
    missing = [c for c in ("query_id", "product_id", "score") if c not in pairs_df.columns]
    if missing:
        raise ValueError(f"pairs_df is missing column(s) {missing}. Fix: pass the labels table "
                         "(query_id, product_id, score in [0,1]); for human grades use score = grade / 3.")
    s = pd.to_numeric(pairs_df["score"], errors="coerce")
    if s.isna().any():
        raise ValueError(f"pairs_df column 'score' has {int(s.isna().sum())} missing/non-numeric value(s). "
                         "Fix: fill or drop those rows.")
    if ((s < 0) | (s > 1)).any():
        raise ValueError(f"pairs_df column 'score' must lie in [0, 1] (seen {s.min():.3g}..{s.max():.3g}). "
                         "Fix: rescale the target, e.g. grade / 3.")
    df = pairs_df[["query_id", "product_id"]].astype(str).assign(score=s.astype(float))
    if df.duplicated(["query_id", "product_id"]).any():
        raise ValueError("pairs_df has duplicate (query_id, product_id) rows. Fix: deduplicate (e.g. average "
                         "the scores) before fine-tuning.")
    if df["query_id"].nunique() < 2:
        raise ValueError("pairs_df needs labelled pairs of at least 2 queries. Fix: label more queries.")
    return df.reset_index(drop=True)


def _split_queries(qids: Sequence[str], frac: float, seed: int) -> tuple[set[str], set[str]]:
    uq = np.array(sorted(set(qids)))
    rng = np.random.default_rng(seed)
    rng.shuffle(uq)
    n_val = int(round(len(uq) * frac)) if frac > 0 else 0
    n_val = min(max(n_val, 1 if frac > 0 else 0), len(uq) - 1)
    return set(uq[n_val:]), set(uq[:n_val])


def _train_val_queries(qids: pd.Series, cfg: CrossEncoderConfig, seed: int,
                       val_query_ids: Sequence[str] | None) -> tuple[set[str], set[str]]:
    """(train, validation) query ids: the given validation queries, else a seeded `cfg.val_fraction` split."""
    if val_query_ids is None:
        return _split_queries(qids, cfg.val_fraction, seed)
    val_q = {str(q) for q in val_query_ids}
    unknown = val_q - set(qids)
    if unknown or not val_q or val_q >= set(qids):
        raise ValueError(f"val_query_ids must be a non-empty, proper subset of pairs_df's query_id "
                         f"({len(unknown)} unknown, e.g. {sorted(unknown)[:3]}). Fix: pass ids of labelled "
                         "queries and leave some queries for training.")
    return set(qids) - val_q, val_q


def _cap_queries(pairs: pd.DataFrame, cap: int | None, seed: int, always: Sequence[str] | None) -> pd.DataFrame:
    """At most `cap` queries' pairs (plus the `always` ones, the named validation queries), the queries a
    seeded sample: training cost grows with pairs, and past a few thousand labelled queries a CPU budget
    buys more from scoring every pair than from training on it."""
    fixed = {str(q) for q in always or ()}
    uq = np.array(sorted(set(pairs["query_id"]) - fixed))
    if cap is None or len(uq) <= cap:
        return pairs
    keep = fixed | set(np.random.default_rng(seed).choice(uq, size=cap, replace=False).tolist())
    return pairs[pairs["query_id"].isin(keep)].reset_index(drop=True)


def _fingerprint(df: pd.DataFrame) -> str:
    h = hashlib.sha1(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


# --- losses and the head's fit before / calibration after ----------------------------------------

def _list_loss(logits: torch.Tensor, y: torch.Tensor, cfg: CrossEncoderConfig) -> torch.Tensor:
    """Loss for one query's list of docs."""
    if cfg.loss == "listwise":
        target = torch.softmax(cfg.temperature * y, dim=0)
        return -(target * torch.log_softmax(logits, dim=0)).sum()
    if cfg.loss == "pairwise":
        diff_y = y[:, None] - y[None, :]
        w = diff_y.clamp(min=0)  # i should rank above j when y_i > y_j
        if float(w.sum()) == 0:
            return logits.sum() * 0.0
        diff_s = logits[:, None] - logits[None, :]
        return (w * torch.nn.functional.softplus(-diff_s)).sum() / w.sum()
    return torch.nn.functional.mse_loss(torch.sigmoid(logits), y)


def _distill_loss(logits: torch.Tensor, teacher: torch.Tensor, cfg: CrossEncoderConfig) -> torch.Tensor:
    target = torch.softmax(cfg.distill_temperature * teacher, dim=0)
    return -(target * torch.log_softmax(logits, dim=0)).sum()


def _fit_linear_probe(model, feats: torch.Tensor, lists: list[np.ndarray], y: np.ndarray,
                      cfg: CrossEncoderConfig) -> None:
    """Fit the 1-logit classifier on frozen features with the training loss (LBFGS, convex for listwise).

    Why: a random head makes the first fine-tuning steps push noise gradients into the encoder and,
    on a CPU budget of a few dozen steps, never gets far (measured: listwise loss barely moved). Linear
    probe first, then fine-tune (LP-FT) starts from a head that already ranks.
    """
    pos = {int(i): k for k, i in enumerate(np.concatenate(lists))}
    w = torch.zeros(feats.shape[1], requires_grad=True)
    yt = torch.from_numpy(y.astype(np.float32))
    rows = [torch.tensor([pos[int(i)] for i in il]) for il in lists]
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = feats @ w
        loss = sum(_list_loss(logits[r], yt[torch.as_tensor(il)], cfg) for r, il in zip(rows, lists)) / len(rows)
        loss = loss + cfg.probe_l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    clf = model.classifier
    with torch.no_grad():
        clf.weight.copy_(w.detach().reshape_as(clf.weight))
        clf.bias.zero_()


def _calibrate_segment_head(model, logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt-scale the segment-cosine head on the training pairs: logit' = a * logit + b (a > 0).

    Why: the listwise loss is shift-invariant, so the raw logits sit far from 0 (the joint pass makes
    the two segments' cosines high) and sigmoid(logit) saturates at 1.0 for every pair. Folding a
    monotone affine map into the head keeps the ranking and makes `ce_score` a usable probability.
    """
    x = torch.from_numpy(np.asarray(logits, np.float32))
    t = torch.from_numpy(np.asarray(y, np.float32))
    mu, sd = float(x.mean()), float(x.std().clamp(min=1e-6))
    z = (x - mu) / sd
    log_a, b = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(log_a.exp() * z + b, t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a = float(log_a.detach().exp()) / sd  # logit' = a * logit + (b - a * mu)
    shift = float(b.detach()) - a * mu
    with torch.no_grad():
        model.cos_scale.mul_(a)
        model.cos_bias.mul_(a).add_(shift)
        if model.classifier is not None:
            model.classifier.weight.mul_(a)
            model.classifier.bias.mul_(a)
    return {"a": a, "b": shift}


def _optimizer(model, cfg: CrossEncoderConfig, total: int):
    """(AdamW, schedule): the fresh head learns at `head_lr`, the pretrained body at `lr`; linear warm-up,
    then linear decay to 0 over `total` steps."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and
            (n.startswith(("classifier", "cos_", "cross_gate", "pooler")) or ".pooler." in n)]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return opt, sched


# --- the trainer ---------------------------------------------------------------------------------

class _Model:
    """The model under training with its tokenised pairs: one forward pass for training and scoring,
    through the cached frozen bottom layers when they are cached."""

    def __init__(self, model, tok, enc: dict[str, list], cfg: CrossEncoderConfig, n_pairs: int,
                 progress: bool) -> None:
        self.model, self.tok, self.enc, self.cfg = model, tok, enc, cfg
        self.pad = int(tok.pad_token_id or 0)
        base = getattr(model, model.base_model_prefix, None)
        self.use_cache = bool(cfg.cache_frozen and cfg.freeze_layers >= 1 and base is not None
                              and (_is_segment(model) or (getattr(base, "pooler", None) is not None
                                                          and hasattr(model, "classifier")))
                              and n_pairs * cfg.max_length * model.config.hidden_size * 4 < 3e9)
        self.states, self.pooled, self.segs = (
            _frozen_states(model.eval(), enc, cfg.freeze_layers, self.pad, cfg.batch_size_eval, progress)
            if self.use_cache else (None, None, None))

    def forward(self, idx: Sequence[int]) -> torch.Tensor:
        if self.use_cache:
            return _top_forward(self.model, self.states, idx, self.cfg.freeze_layers, self.segs)
        return self.model(**_collate(self.enc, idx, self.pad)).logits[:, 0]

    @torch.inference_mode()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        self.model.eval()
        s = np.empty(len(rows), np.float32)
        for b in _length_batches([len(self.enc["input_ids"][i]) for i in rows], self.cfg.batch_size_eval):
            s[b] = self.forward(rows[b]).float().numpy()
        return s

    def init_head(self, groups: dict[str, np.ndarray], y_all: np.ndarray, progress: bool) -> None:
        """A fresh cls head starts from a linear probe on frozen features (the segment head needs none)."""
        m, cfg = self.model, self.cfg
        if (cfg.init_head != "linear_probe" or _is_segment(m)
                or not isinstance(getattr(m, "classifier", None), torch.nn.Linear)):
            return
        lists = [groups[q] for q in groups]
        flat_all = np.concatenate(lists)
        feats = (self.pooled[torch.from_numpy(flat_all)] if self.use_cache else
                 _pooled_features(m.eval(), self.enc, flat_all, self.pad, cfg.batch_size_eval, progress))
        _fit_linear_probe(m, feats, lists, y_all, cfg)


class _Validation:
    """Validation NDCG, its history and the best checkpoint so far (the starting point competes too)."""

    def __init__(self, net: _Model, qid_val: np.ndarray, y_val: np.ndarray, val_idx: np.ndarray) -> None:
        self.net, self.qid, self.y, self.idx = net, qid_val, y_val, val_idx
        self.trainable = {n for n, p in net.model.named_parameters() if p.requires_grad}
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"ndcg": -1.0, "state": None, "step": 0}
        self.stale = 0
        if len(val_idx):
            v = self._ndcg()
            self.history.append({"step": 0, "epoch": 0.0, "val_ndcg": v})
            self._keep(v, 0)

    def _ndcg(self) -> float:
        return _val_ndcg(self.qid, self.y, self.net.predict(self.idx), self.net.cfg.eval_k)

    def _keep(self, v: float, step: int) -> None:
        self.best = {"ndcg": v, "step": step, "state": {n: p.detach().clone() for n, p in
                                                         self.net.model.named_parameters() if n in self.trainable}}
        self.stale = 0

    def check(self, step: int, epoch: float, train_loss: float) -> bool:
        """Validate now; True when patience has run out."""
        v = self._ndcg()
        self.history.append({"step": step, "epoch": epoch, "val_ndcg": v, "train_loss": train_loss})
        if v > self.best["ndcg"] + 1e-6:
            self._keep(v, step)
            return False
        self.stale += 1
        return self.stale >= self.net.cfg.patience

    def restore_best(self) -> None:
        if self.best["state"] is not None:
            with torch.no_grad():
                params = dict(self.net.model.named_parameters())
                for n, v in self.best["state"].items():
                    params[n].copy_(v)


def _step(net: _Model, idx_lists: list[np.ndarray], y_all: np.ndarray, teacher: np.ndarray | None,
          opt, sched) -> float:
    """One optimiser step on a batch of whole query lists; returns the batch loss."""
    cfg = net.cfg
    net.model.train()
    logits = net.forward(np.concatenate(idx_lists))
    loss, off = logits.new_zeros(()), 0
    for il in idx_lists:
        lg = logits[off:off + len(il)]
        loss = loss + _list_loss(lg, torch.from_numpy(y_all[il]), cfg)
        if teacher is not None:
            loss = loss + cfg.distill_weight * _distill_loss(lg, torch.from_numpy(teacher[il]), cfg)
        off += len(il)
    loss = loss / len(idx_lists)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in net.model.parameters() if p.requires_grad], 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _train(net: _Model, val: _Validation, groups: dict[str, np.ndarray], y_all: np.ndarray,
           teacher: np.ndarray | None, rng: np.random.Generator, progress: bool) -> tuple[int, bool]:
    """Epochs of shuffled query batches with validation `evals_per_epoch` times an epoch; (steps, stopped).

    The numpy generator draws the query order, then each query's document sample, in that order: a
    seed's model is reproducible only while that order holds."""
    cfg = net.cfg
    steps_per_epoch = math.ceil(len(groups) / cfg.queries_per_batch)
    total = steps_per_epoch * cfg.epochs
    opt, sched = _optimizer(net.model, cfg, total)
    eval_at = {int(round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}
    step = 0
    bar = tqdm(total=total, disable=not progress, desc="fine-tune cross-encoder")
    try:
        for epoch in range(cfg.epochs):
            order = list(groups)
            rng.shuffle(order)
            losses: list[float] = []
            for b in range(steps_per_epoch):
                batch_q = order[b * cfg.queries_per_batch:(b + 1) * cfg.queries_per_batch]
                idx_lists = [rng.permutation(groups[q])[:cfg.max_docs_per_query] for q in batch_q]
                losses.append(_step(net, idx_lists, y_all, teacher, opt, sched))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if len(val.idx) and (b + 1) in eval_at and val.check(step, epoch + (b + 1) / steps_per_epoch,
                                                                      float(np.mean(losses))):
                    return step, True
    finally:
        bar.close()
    return step, False


def _metadata(cfg: CrossEncoderConfig, seed: int, pairs: pd.DataFrame, val_q: set[str], explicit_val: bool,
              metrics: dict[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    """What the saved folder says about itself; the version is a hash of config, seed and data."""
    cfg_json = cfg.model_dump(mode="json")
    data_fp = _fingerprint(pairs)
    key = [cfg_json, seed, data_fp] + ([sorted(val_q)] if explicit_val else [])
    return {"format_version": FORMAT_VERSION,
            "version": "ce-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10],
            "kind": "cross-encoder", "base_model": str(cfg.base_model or default_encoder_path()), "seed": seed,
            "config": cfg_json,
            "text": {"fields": list(cfg.text_fields), "max_bullet_chars": cfg.max_bullet_chars,
                     "max_description_chars": cfg.max_description_chars},
            "data_fingerprint": data_fp, "metrics": metrics, "history": history,
            "val_query_ids": sorted(val_q), "created_at": pd.Timestamp.now(tz="UTC").isoformat()}


def fine_tune_cross_encoder(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                            out_dir: str | Path, cfg: CrossEncoderConfig | None = None, seed: int = 0,
                            progress: bool = True, val_query_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune a cross-encoder on (query_id, product_id, score in [0,1]) and save it to `out_dir`.

    Queries are split (seeded) into train / validation; training stops early when validation NDCG@k
    (gain 2^(3*score)-1) stops improving, and the best checkpoint is saved. `val_query_ids` names the
    validation queries instead (e.g. the human-judged ones when the rest are LLM labels of another
    catalogue), overriding `cfg.val_fraction`. Returns the metadata dict
    (also written to out_dir/ltr_cross_encoder.json): version, path, config, metrics.
    Logged to MLflow when a run is active. The seeded streams (torch for the head's init and dropout,
    numpy for query order and document sampling) are drawn in a fixed order, so a seed's model is
    reproducible.
    """
    cfg = cfg if isinstance(cfg, CrossEncoderConfig) else CrossEncoderConfig.model_validate(cfg or {})
    t0 = time.time()
    pairs = _cap_queries(_check_pairs(pairs_df), cfg.max_train_queries, seed, val_query_ids)
    qs, ts = pair_texts(pairs, products_df, queries_df, **cfg.text_kwargs())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_q, val_q = _train_val_queries(pairs["query_id"], cfg, seed, val_query_ids)
    is_val = pairs["query_id"].isin(val_q).to_numpy()
    model, tok = load_base_cross_encoder(cfg.base_model, cfg.max_length, cfg)
    _freeze(model, cfg.freeze_layers)
    enc = _tokenize_pairs(tok, qs, ts, cfg.max_length)
    y_all = pairs["score"].to_numpy(np.float32)
    teacher = None
    if cfg.distill_weight > 0:
        from ..biencoder import BiEncoder
        teacher = BiEncoder(cfg.distill_teacher or cfg.base_model, max_length=128).cosine(qs, ts, progress=progress)
    groups = {q: np.flatnonzero((pairs["query_id"] == q).to_numpy() & ~is_val) for q in sorted(train_q)}
    net = _Model(model, tok, enc, cfg, len(pairs), progress)
    net.init_head(groups, y_all, progress)
    val_idx = np.flatnonzero(is_val)
    val = _Validation(net, pairs["query_id"].to_numpy()[val_idx], y_all[val_idx], val_idx)
    step, stopped = _train(net, val, groups, y_all, teacher, rng, progress)
    val.restore_best()
    model.eval()
    calibration = None
    if _is_segment(model):
        train_idx = np.flatnonzero(~is_val)
        calibration = _calibrate_segment_head(model, net.predict(train_idx), y_all[train_idx])
    for p in model.parameters():
        p.requires_grad_(True)
    metrics = {"val_ndcg_at_k": val.best["ndcg"] if len(val_idx) else None,
               "val_ndcg_at_k_before": val.history[0]["val_ndcg"] if len(val_idx) else None,
               "best_step": val.best["step"], "steps": step, "early_stopped": stopped,
               "n_train_pairs": int((~is_val).sum()), "n_val_pairs": int(is_val.sum()),
               "n_train_queries": len(train_q), "n_val_queries": len(val_q),
               "train_seconds": round(time.time() - t0, 2), "calibration": calibration}
    meta = _metadata(cfg, seed, pairs, val_q, val_query_ids is not None, metrics, val.history)
    out_dir = Path(out_dir)
    _atomic_save(model, tok, meta, out_dir)
    meta["path"] = str(out_dir.resolve())
    _log_mlflow(meta, out_dir)
    return meta


def _log_mlflow(meta: dict[str, Any], out_dir: Path) -> None:
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return
    if mlflow.active_run() is None:
        return
    mlflow.log_params({f"ce.{k}": v for k, v in meta["config"].items() if not isinstance(v, (list, tuple))})
    mlflow.log_params({"ce.version": meta["version"], "ce.seed": meta["seed"]})
    mlflow.log_metrics({f"ce.{k}": float(v) for k, v in meta["metrics"].items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mlflow.log_artifacts(str(out_dir), artifact_path="cross_encoder")


__all__ = ["fine_tune_cross_encoder"]
