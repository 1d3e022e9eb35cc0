"""Cross-encoder relevance feature: all-MiniLM-L6-v2 + a 1-logit head, fine-tuned on (LLM) labels.

Why it looks like this:
- Two heads (`CrossEncoderConfig.head`). Default "segment_cosine": one joint pass over
  "[CLS] query [SEP] product [SEP]", score = scale * cos(mean query-segment states, mean product-segment
  states) + bias (`crossencoder_modeling.py`). all-MiniLM-L6-v2 is a bi-encoder checkpoint, so this head
  starts close to its cosine ranking, while a fresh [CLS] head ("cls") starts at random and measured
  random-level held-out NDCG after CPU-budget fine-tuning. After training, a monotone Platt map is
  folded into the segment head so sigmoid(logit) is a calibrated, non-saturated score.
- Saved as a Hugging Face sequence classifier (num_labels=1) + tokenizer + `ltr_cross_encoder.json`
  (version, training config, metrics). "cls" is a plain `BertForSequenceClassification` that
  sentence-transformers' `CrossEncoder(path)` loads as is; "segment_cosine" ships its modeling file with
  an `auto_map`, so `CrossEncoder(path, trust_remote_code=True)` loads the very same weights. Any other
  local cross-encoder dir can be scored by `CrossEncoderScorer(path)`.
- Training is *listwise per query* by default (softmax cross-entropy against softmax(T * score)): only
  the order within a query matters for ranking, and a pointwise MSE on a few thousand pairs spends the
  model's capacity on calibrating scores across queries (measured here: MSE fine-tunes lose to the
  zero-shot bi-encoder). Lower layers are frozen (cheaper on CPU and less forgetting), sequences are
  short (64 tokens), and an optional distillation term keeps the bi-encoder's ranking signal.
- Validation is query-grouped (no query in both train and validation) with early stopping on NDCG@10.
- Inference tokenizes once, sorts by length and pads each batch only to its own longest pair, under
  `torch.inference_mode`; ONNX Runtime (fp32 / int8 dynamic quantisation) is an optional backend.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from ltr.data.encoder import default_encoder_path

from .crossencoder_modeling import HEAD_NAME, BertSegmentCosineForSequenceClassification
from .text import DEFAULT_FIELDS, pair_texts

META_FILE = "ltr_cross_encoder.json"
FORMAT_VERSION = 1
Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8"]


# --- config --------------------------------------------------------------------------------------

class CrossEncoderConfig(BaseModel):
    """Fine-tuning settings (validated; unknown keys are rejected so typos fail loudly)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(None, description="local HF model dir; None = all-MiniLM-L6-v2")
    max_length: int = Field(64, ge=8, le=512, description="tokens per (query, product) pair")
    head: Literal["segment_cosine", "cls"] = Field(
        "segment_cosine", description="segment_cosine: scale * cos(mean query-segment, mean product-segment "
        "states) + bias from the joint pass (starts at the bi-encoder's ranking); cls: a 1-logit head on "
        "the [CLS] pooler (plain BertForSequenceClassification)")
    segment_local_layers: int = Field(0, ge=0, description="segment_cosine: bottom layers with "
                                      "within-segment attention only (the rest attend across segments)")
    segment_token_types: bool = Field(False, description="segment_cosine: feed token_type_ids to the "
                                      "embeddings (False feeds zeros, as the bi-encoder was trained)")
    segment_own_cls: bool = Field(False, description="segment_cosine: give the product segment its own [CLS] "
                                  "and positions from 0, as the bi-encoder saw it alone")
    cross_gate_init: float | None = Field(None, description="segment_cosine: a learnt per-head bias on "
                                          "query<->product attention in the cross-attending layers, starting "
                                          "here (e.g. -4: nearly the bi-encoder); None = no gate")
    cls_residual: bool = Field(False, description="segment_cosine: add a [CLS] linear head initialised at 0")
    cos_scale_init: float = Field(20.0, gt=0, description="segment_cosine: initial logit scale of the cosine")
    epochs: int = Field(2, ge=1, le=100)
    loss: Literal["listwise", "pairwise", "mse"] = "listwise"
    temperature: float = Field(5.0, gt=0, description="listwise target = softmax(temperature * score)")
    queries_per_batch: int = Field(4, ge=1)
    max_docs_per_query: int = Field(32, ge=2, description="docs sampled per query per step")
    lr: float = Field(5e-5, gt=0, description="encoder learning rate")
    head_lr: float = Field(1e-3, gt=0, description="pooler + classifier learning rate")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    freeze_layers: int = Field(2, ge=0, description="embeddings + this many bottom layers stay frozen")
    cache_frozen: bool = Field(True, description="run the frozen bottom once and cache its output: later "
                               "epochs only pay for the trainable top layers")
    init_head: Literal["linear_probe", "random"] = Field(
        "linear_probe", description="fit the fresh head on frozen features first (LP-FT), or start random")
    probe_l2: float = Field(1e-3, ge=0, description="L2 penalty of the linear-probe head fit")
    distill_weight: float = Field(0.0, ge=0, description="weight of a listwise KL to bi-encoder cosine")
    distill_temperature: float = Field(20.0, gt=0)
    distill_teacher: str | None = Field(None, description="bi-encoder dir for the distillation target; None = "
                                        "base_model (set it when base_model is itself a fine-tuned cross-encoder)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of queries held out for early stopping")
    evals_per_epoch: int = Field(1, ge=1)
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    eval_k: int = Field(10, ge=1)
    batch_size_eval: int = Field(64, ge=1)
    text_fields: tuple[str, ...] = DEFAULT_FIELDS
    max_bullet_chars: int = Field(300, ge=0)
    max_description_chars: int = Field(200, ge=0)
    num_threads: int | None = Field(None, ge=1, description="torch threads; None keeps the current setting")

    @field_validator("text_fields")
    @classmethod
    def _fields_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in v if f not in DEFAULT_FIELDS]
        if bad or not v:
            raise ValueError(f"text_fields {list(v)} invalid; use a non-empty subset of {list(DEFAULT_FIELDS)}")
        return tuple(v)

    def text_kwargs(self) -> dict[str, Any]:
        return {"fields": self.text_fields, "max_bullet_chars": self.max_bullet_chars,
                "max_description_chars": self.max_description_chars}


# --- metrics -------------------------------------------------------------------------------------

def ndcg_at_k(groups: Sequence[Any], gains: Sequence[float], scores: Sequence[float], k: int = 10) -> float:
    """Mean NDCG@k over groups (queries); groups whose ideal DCG is 0 count as 0. Ties keep input order."""
    df = pd.DataFrame({"g": np.asarray(groups), "gain": np.asarray(gains, float), "s": np.asarray(scores, float)})
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for _, g in df.groupby("g", sort=False):
        gain, s = g["gain"].to_numpy(), g["s"].to_numpy()
        top = gain[np.argsort(-s, kind="stable")[:k]]
        ideal = np.sort(gain)[::-1][:k]
        idcg = float((ideal * disc[:len(ideal)]).sum())
        vals.append(float((top * disc[:len(top)]).sum()) / idcg if idcg > 0 else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def _gain(score: np.ndarray) -> np.ndarray:
    """Exponential gain on the 0..3 grade scale: 2^(3*score) - 1."""
    return np.power(2.0, 3.0 * np.asarray(score, float)) - 1.0


# --- tokenization and batching -------------------------------------------------------------------

def _tokenize_pairs(tokenizer, queries: Sequence[str], texts: Sequence[str], max_length: int) -> dict[str, list]:
    if len(queries) != len(texts):
        raise ValueError(f"queries ({len(queries)}) and texts ({len(texts)}) must have the same length.")
    return tokenizer(list(map(str, queries)), list(map(str, texts)), truncation="longest_first",
                     max_length=max_length, return_token_type_ids=True)


def _collate(enc: dict[str, list], idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the rows `idx` to their own longest length (no waste beyond the batch)."""
    width = max(len(enc["input_ids"][i]) for i in idx)
    n = len(idx)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    tt = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for r, i in enumerate(idx):
        L = len(enc["input_ids"][i])
        ids[r, :L] = enc["input_ids"][i]
        tt[r, :L] = enc["token_type_ids"][i]
        mask[r, :L] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(tt)}


def _length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut into batches of <= batch_size rows and <= max_tokens."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, cur, width = [], [], 0
    for i in order:
        w = max(width, int(lengths[i]))
        if cur and (len(cur) >= batch_size or (max_tokens and w * (len(cur) + 1) > max_tokens)):
            batches.append(np.asarray(cur))
            cur, w = [], int(lengths[i])
        cur.append(int(i))
        width = w
    if cur:
        batches.append(np.asarray(cur))
    return batches


# --- inference -----------------------------------------------------------------------------------

def _read_meta(path: Path) -> dict[str, Any]:
    p = path / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


class CrossEncoderScorer:
    """Fast batched scoring with any local cross-encoder dir (ours or another HF one).

    backend: "torch" (fp32, exact), "torch-bf16" (bfloat16 autocast; fast on AMX CPUs),
    "onnx" (ONNX Runtime fp32) or "onnx-int8" (ONNX Runtime, int8 dynamic quantisation).
    activation: "sigmoid" (what sentence-transformers' CrossEncoder.predict returns for 1 label) or "none".
    """

    def __init__(self, path: str | Path, backend: Backend = "torch", max_length: int | None = None,
                 activation: Literal["sigmoid", "none"] = "sigmoid", num_threads: int | None = None,
                 onnx_dir: str | Path | None = None) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"cross-encoder dir {self.path} has no config.json. Fix: pass a directory "
                                    "written by fine_tune_cross_encoder() or any local HF cross-encoder.")
        if backend not in ("torch", "torch-bf16", "onnx", "onnx-int8"):
            raise ValueError(f"backend={backend!r} unknown. Fix: use torch, torch-bf16, onnx or onnx-int8.")
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"activation={activation!r} unknown. Fix: use 'sigmoid' or 'none'.")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.backend, self.activation = backend, activation
        self.meta = _read_meta(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.max_length = int(max_length or self.meta.get("config", {}).get("max_length")
                              or min(int(self.tokenizer.model_max_length), 512))
        conf = AutoConfig.from_pretrained(str(self.path))
        if getattr(conf, "ltr_head", None) == HEAD_NAME:  # our segment-cosine head: no remote code needed
            model, info = BertSegmentCosineForSequenceClassification.from_pretrained(
                str(self.path), output_loading_info=True)
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(self.path), num_labels=1, output_loading_info=True)
        if any("classifier" in k or k.startswith(("score", "cos_")) for k in info.get("missing_keys", [])):
            raise ValueError(f"{self.path} holds an encoder without a trained classification head. Fix: "
                             "fine-tune it first with fine_tune_cross_encoder(), or pass a cross-encoder dir.")
        if model.config.num_labels != 1:
            raise ValueError(f"{self.path} has num_labels={model.config.num_labels}; a relevance "
                             "cross-encoder needs exactly 1 output. Fix: pass a 1-label cross-encoder.")
        self.model = model.eval()
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self._ort = None
        if backend.startswith("onnx"):
            from .onnx_export import ort_session
            self._ort = ort_session(self.path, self.model, quantize=backend == "onnx-int8",
                                    onnx_dir=onnx_dir, num_threads=num_threads or torch.get_num_threads())
            self._ort_inputs = {i.name for i in self._ort.get_inputs()}

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "external"))

    def _forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        if self._ort is not None:
            feeds = {k: v.numpy() for k, v in batch.items() if k in self._ort_inputs}
            return self._ort.run(None, feeds)[0][:, 0].astype(np.float32)
        if self.backend == "torch-bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.model(**batch).logits[:, 0].float().numpy()
        return self.model(**batch).logits[:, 0].float().numpy()

    @torch.inference_mode()
    def score(self, queries: Sequence[str], texts: Sequence[str], batch_size: int = 64,
              progress: bool = False, max_tokens: int | None = None) -> np.ndarray:
        """Scores for queries[i] vs texts[i], float32, in input order."""
        if isinstance(queries, str) or isinstance(texts, str):
            raise TypeError("score() takes lists of queries and texts. Fix: wrap single strings in a list.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        n = len(queries)
        if n == 0:
            if len(texts):
                raise ValueError(f"queries (0) and texts ({len(texts)}) must have the same length.")
            return np.zeros(0, np.float32)
        enc = _tokenize_pairs(self.tokenizer, queries, texts, self.max_length)
        lengths = [len(x) for x in enc["input_ids"]]
        out = np.empty(n, np.float32)
        for idx in tqdm(_length_batches(lengths, batch_size, max_tokens), disable=not progress,
                        desc="cross-encoder", leave=False):
            out[idx] = self._forward(_collate(enc, idx, self.pad_id))
        if self.activation == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out.astype(np.float32)


def score_pairs(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                scorer: CrossEncoderScorer, batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
    """Feature table [query_id, product_id, ce_score] for the (query_id, product_id) rows of `pairs_df`.

    Product text is rendered with the settings the model was trained with (from its metadata).
    """
    tk = {k: v for k, v in scorer.meta.get("text", {}).items()
          if k in ("fields", "max_bullet_chars", "max_description_chars")}
    qs, ts = pair_texts(pairs_df, products_df, queries_df, **tk)
    s = scorer.score(qs, ts, batch_size=batch_size, progress=progress)
    return pd.DataFrame({"query_id": pairs_df["query_id"].astype(str).to_numpy(),
                         "product_id": pairs_df["product_id"].astype(str).to_numpy(),
                         "ce_score": s.astype("float64")})


# --- fine-tuning ---------------------------------------------------------------------------------

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


def _fingerprint(df: pd.DataFrame) -> str:
    h = hashlib.sha1(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


def _atomic_save(model, tokenizer, meta: dict[str, Any], out_dir: Path) -> None:
    """Write to a sibling temp dir, then swap it in: a crash never leaves a half-written model."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if _is_segment(model):  # copies crossencoder_modeling.py + auto_map: loadable with trust_remote_code
        model.register_for_auto_class("AutoModelForSequenceClassification")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_base_cross_encoder(base_model: str | Path | None, max_length: int,
                            cfg: CrossEncoderConfig | None = None):
    """(model, tokenizer): the encoder with a fresh 1-logit head, set up the way sentence-transformers
    expects (sigmoid activation, model_max_length = max_length).

    cfg=None (or cfg.head == "cls") gives a plain BertForSequenceClassification; cfg.head ==
    "segment_cosine" gives `BertSegmentCosineForSequenceClassification` on the same encoder weights.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(base_model) if base_model else default_encoder_path()
    if not path.exists():
        raise FileNotFoundError(f"base_model {path} does not exist. Fix: point base_model at a local HF model "
                                "dir or leave it empty for all-MiniLM-L6-v2.")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = max_length
    if cfg is not None and cfg.head == HEAD_NAME:
        conf = AutoConfig.from_pretrained(str(path), num_labels=1)
        if conf.model_type != "bert":
            raise ValueError(f"head='segment_cosine' needs a BERT-type encoder, {path} is "
                             f"{conf.model_type!r}. Fix: use head='cls' for this base model.")
        if cfg.segment_local_layers > conf.num_hidden_layers:
            raise ValueError(f"segment_local_layers={cfg.segment_local_layers} but the model has "
                             f"{conf.num_hidden_layers} layers. Fix: use 0..{conf.num_hidden_layers}.")
        conf.update({"ltr_head": HEAD_NAME, "segment_local_layers": cfg.segment_local_layers,
                     "segment_token_types": cfg.segment_token_types, "cls_residual": cfg.cls_residual,
                     "segment_own_cls": cfg.segment_own_cls, "cross_gate_init": cfg.cross_gate_init,
                     "cls_token_id": int(tok.cls_token_id or 101),
                     "cos_scale_init": cfg.cos_scale_init, "sep_token_id": int(tok.sep_token_id or 102)})
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the expected "cos_* missing, pooler unused" load report is noise
        try:
            model = BertSegmentCosineForSequenceClassification.from_pretrained(str(path), config=conf)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    return model, tok


def _is_segment(model) -> bool:
    return isinstance(model, BertSegmentCosineForSequenceClassification)


def _freeze(model, n_layers: int) -> None:
    base = getattr(model, model.base_model_prefix, None)
    if base is None or n_layers <= 0:
        return
    for p in base.embeddings.parameters():
        p.requires_grad_(False)
    layers = base.encoder.layer
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers={n_layers} but the model has {len(layers)} layers. "
                         f"Fix: use 0..{len(layers)}.")
    for layer in layers[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)
    gates = getattr(model, "cross_gate", None)
    n_local = int(getattr(model.config, "segment_local_layers", 0))
    for i, g in enumerate(gates if gates is not None else ()):  # a frozen layer's gate is frozen too
        if n_local + i < n_layers:
            g.requires_grad_(False)


@torch.inference_mode()
def _pooled_features(model, enc: dict[str, list], idx: np.ndarray, pad: int, batch_size: int,
                     progress: bool) -> torch.Tensor:
    """What the classifier sees (pooler output) for rows `idx`, computed once with the encoder frozen."""
    base = getattr(model, model.base_model_prefix)
    sub = {k: [enc[k][i] for i in idx] for k in ("input_ids", "token_type_ids")}
    out = torch.empty((len(idx), model.config.hidden_size))
    for b in tqdm(_length_batches([len(x) for x in sub["input_ids"]], batch_size), disable=not progress,
                  desc="linear probe features", leave=False):
        o = base(**_collate(sub, b, pad))
        out[torch.from_numpy(b)] = (o.pooler_output if o.pooler_output is not None else o.last_hidden_state[:, 0])
    return out


@torch.inference_mode()
def _frozen_states(model, enc: dict[str, list], n_frozen: int, pad: int, batch_size: int,
                   progress: bool) -> tuple[list[torch.Tensor], torch.Tensor | None, list[torch.Tensor] | None]:
    """Per row: hidden states after the frozen bottom (trimmed to the row's length), the pooler output
    (cls head only) and the rows' segments as the layers see them (segment-cosine head only)."""
    base = getattr(model, model.base_model_prefix)
    seg_head = _is_segment(model)
    n = len(enc["input_ids"])
    states: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    segs: list[torch.Tensor] | None = [None] * n if seg_head else None  # type: ignore[list-item]
    pooled = None if seg_head else torch.empty((n, model.config.hidden_size))
    for b in tqdm(_length_batches([len(x) for x in enc["input_ids"]], batch_size), disable=not progress,
                  desc="frozen layers (once)", leave=False):
        batch = _collate(enc, b, pad)
        mask = batch["attention_mask"]
        if seg_head:
            ids, mask, seg, pos = model.layout(batch["input_ids"], mask, batch["token_type_ids"])
            h = model.run_layers(model.embed(ids, seg, pos), mask, seg, 0, n_frozen)
        else:
            o = base(**batch, output_hidden_states=True)
            h = o.hidden_states[n_frozen]
            pooled[torch.from_numpy(b)] = o.pooler_output
        lens = mask.sum(1).tolist()
        for r, i in enumerate(b):
            states[i] = h[r, :lens[r]].clone()
            if segs is not None:
                segs[i] = seg[r, :lens[r]].clone()
    return states, pooled, segs


def _top_forward(model, states: list[torch.Tensor], idx: Sequence[int], n_frozen: int,
                 segments: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits from cached frozen-bottom states: trainable top layers + head only.

    `segments` (per row, as `_frozen_states` returns them) is needed by the segment-cosine head."""
    from transformers.masking_utils import create_bidirectional_mask

    base = getattr(model, model.base_model_prefix)
    rows = [states[i] for i in idx]
    width = max(r.shape[0] for r in rows)
    h = torch.zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, x in enumerate(rows):
        h[r, :x.shape[0]] = x
        mask[r, :x.shape[0]] = 1
    if _is_segment(model):
        if segments is None:
            raise ValueError("the segment-cosine head needs the rows' token_type_ids (segments=).")
        seg = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seg[r, :len(segments[i])] = torch.as_tensor(segments[i])
        h = model.run_layers(h, mask, seg, n_frozen)
        return model.head(h, mask, seg)
    am = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=mask)
    for layer in base.encoder.layer[n_frozen:]:
        h = layer(h, am)
        h = h[0] if isinstance(h, tuple) else h
    return model.classifier(model.dropout(base.pooler(h)))[:, 0]


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


def fine_tune_cross_encoder(pairs_df: pd.DataFrame, products_df: pd.DataFrame, queries_df: pd.DataFrame,
                            out_dir: str | Path, cfg: CrossEncoderConfig | None = None, seed: int = 0,
                            progress: bool = True, val_query_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune a cross-encoder on (query_id, product_id, score in [0,1]) and save it to `out_dir`.

    Queries are split (seeded) into train / validation; training stops early when validation NDCG@k
    (gain 2^(3*score)-1) stops improving, and the best checkpoint is saved. `val_query_ids` names the
    validation queries instead (e.g. the human-judged ones when the rest are LLM labels of another
    catalogue), overriding `cfg.val_fraction`. Returns the metadata dict
    (also written to out_dir/ltr_cross_encoder.json): version, path, config, metrics.
    Logged to MLflow when a run is active.
    """
    cfg = cfg or CrossEncoderConfig()
    if not isinstance(cfg, CrossEncoderConfig):
        cfg = CrossEncoderConfig.model_validate(cfg)
    t0 = time.time()
    pairs = _check_pairs(pairs_df)
    qs, ts = pair_texts(pairs, products_df, queries_df, **cfg.text_kwargs())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    if val_query_ids is not None:
        val_q = {str(q) for q in val_query_ids}
        unknown = val_q - set(pairs["query_id"])
        if unknown or not val_q or val_q >= set(pairs["query_id"]):
            raise ValueError(f"val_query_ids must be a non-empty, proper subset of pairs_df's query_id "
                             f"({len(unknown)} unknown, e.g. {sorted(unknown)[:3]}). Fix: pass ids of labelled "
                             "queries and leave some queries for training.")
        train_q = set(pairs["query_id"]) - val_q
    else:
        train_q, val_q = _split_queries(pairs["query_id"], cfg.val_fraction, seed)
    is_val = pairs["query_id"].isin(val_q).to_numpy()
    model, tok = load_base_cross_encoder(cfg.base_model, cfg.max_length, cfg)
    _freeze(model, cfg.freeze_layers)
    enc = _tokenize_pairs(tok, qs, ts, cfg.max_length)
    y_all = pairs["score"].to_numpy(np.float32)

    teacher = None
    if cfg.distill_weight > 0:
        from .biencoder import BiEncoder
        teacher = BiEncoder(cfg.distill_teacher or cfg.base_model, max_length=128).cosine(qs, ts, progress=progress)

    groups: dict[str, np.ndarray] = {q: np.flatnonzero((pairs["query_id"] == q).to_numpy() & ~is_val)
                                     for q in sorted(train_q)}
    pad = int(tok.pad_token_id or 0)
    head = [p for n, p in model.named_parameters() if p.requires_grad and
            (n.startswith(("classifier", "cos_", "cross_gate", "pooler")) or ".pooler." in n)]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(groups) / cfg.queries_per_batch)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    eval_at = {int(round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}
    val_idx = np.flatnonzero(is_val)

    base = getattr(model, model.base_model_prefix, None)
    use_cache = bool(cfg.cache_frozen and cfg.freeze_layers >= 1 and base is not None
                     and (_is_segment(model) or (getattr(base, "pooler", None) is not None
                                                 and hasattr(model, "classifier")))
                     and len(pairs) * cfg.max_length * model.config.hidden_size * 4 < 3e9)
    states, pooled, segs = (_frozen_states(model.eval(), enc, cfg.freeze_layers, pad, cfg.batch_size_eval,
                                           progress) if use_cache else (None, None, None))

    def forward(idx: Sequence[int]) -> torch.Tensor:
        if use_cache:
            return _top_forward(model, states, idx, cfg.freeze_layers, segs)
        return model(**_collate(enc, idx, pad)).logits[:, 0]

    @torch.inference_mode()
    def validate() -> float:
        model.eval()
        s = np.empty(len(val_idx), np.float32)
        for b in _length_batches([len(enc["input_ids"][i]) for i in val_idx], cfg.batch_size_eval):
            s[b] = forward(val_idx[b]).float().numpy()
        return ndcg_at_k(pairs["query_id"].to_numpy()[val_idx], _gain(y_all[val_idx]), s, cfg.eval_k)

    if (cfg.init_head == "linear_probe" and not _is_segment(model)
            and isinstance(getattr(model, "classifier", None), torch.nn.Linear)):
        lists = [groups[q] for q in groups]
        flat_all = np.concatenate(lists)
        feats = (pooled[torch.from_numpy(flat_all)] if use_cache else
                 _pooled_features(model.eval(), enc, flat_all, pad, cfg.batch_size_eval, progress))
        _fit_linear_probe(model, feats, lists, y_all, cfg)

    history: list[dict[str, float]] = []
    best = {"ndcg": -1.0, "state": None, "step": 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if len(val_idx):
        base_ndcg = validate()  # the starting point (linear-probe head) competes for "best" too
        history.append({"step": 0, "epoch": 0.0, "val_ndcg": base_ndcg})
        best = {"ndcg": base_ndcg, "step": 0,
                "state": {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}}
    stale, step, stopped = 0, 0, False
    bar = tqdm(total=total, disable=not progress, desc="fine-tune cross-encoder")
    for epoch in range(cfg.epochs):
        order = list(groups)
        rng.shuffle(order)
        losses = []
        for b in range(steps_per_epoch):
            model.train()
            batch_q = order[b * cfg.queries_per_batch:(b + 1) * cfg.queries_per_batch]
            idx_lists = [rng.permutation(groups[q])[:cfg.max_docs_per_query] for q in batch_q]
            flat = np.concatenate(idx_lists)
            logits = forward(flat)
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
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if len(val_idx) and (b + 1) in eval_at:
                v = validate()
                history.append({"step": step, "epoch": epoch + (b + 1) / steps_per_epoch, "val_ndcg": v,
                                "train_loss": float(np.mean(losses))})
                if v > best["ndcg"] + 1e-6:
                    best = {"ndcg": v, "step": step,
                            "state": {n: p.detach().clone() for n, p in model.named_parameters()
                                      if n in trainable}}
                    stale = 0
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        stopped = True
                        break
        if stopped:
            break
    bar.close()
    if best["state"] is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, v in best["state"].items():
                params[n].copy_(v)
    model.eval()
    calibration = None
    if _is_segment(model):
        train_idx = np.flatnonzero(~is_val)
        with torch.inference_mode():
            s_tr = np.empty(len(train_idx), np.float32)
            for b in _length_batches([len(enc["input_ids"][i]) for i in train_idx], cfg.batch_size_eval):
                s_tr[b] = forward(train_idx[b]).float().numpy()
        calibration = _calibrate_segment_head(model, s_tr, y_all[train_idx])
    for p in model.parameters():
        p.requires_grad_(True)

    cfg_json = cfg.model_dump(mode="json")
    data_fp = _fingerprint(pairs)
    key = [cfg_json, seed, data_fp] + ([sorted(val_q)] if val_query_ids is not None else [])
    version = "ce-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    metrics = {"val_ndcg_at_k": best["ndcg"] if len(val_idx) else None,
               "val_ndcg_at_k_before": history[0]["val_ndcg"] if len(val_idx) else None,
               "best_step": best["step"], "steps": step, "early_stopped": stopped,
               "n_train_pairs": int((~is_val).sum()), "n_val_pairs": int(is_val.sum()),
               "n_train_queries": len(train_q), "n_val_queries": len(val_q),
               "train_seconds": round(time.time() - t0, 2), "calibration": calibration}
    out_dir = Path(out_dir)
    meta = {"format_version": FORMAT_VERSION, "version": version, "kind": "cross-encoder",
            "base_model": str(cfg.base_model or default_encoder_path()), "seed": seed, "config": cfg_json,
            "text": {"fields": list(cfg.text_fields), "max_bullet_chars": cfg.max_bullet_chars,
                     "max_description_chars": cfg.max_description_chars},
            "data_fingerprint": data_fp, "metrics": metrics, "history": history,
            "val_query_ids": sorted(val_q), "created_at": pd.Timestamp.now(tz="UTC").isoformat()}
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


__all__ = [
    "META_FILE",
    "CrossEncoderConfig",
    "CrossEncoderScorer",
    "fine_tune_cross_encoder",
    "load_base_cross_encoder",
    "ndcg_at_k",
    "score_pairs",
]
