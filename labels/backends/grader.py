"""The fine-tuned local grader: the offline default labeler.

Recipe (chosen because CPU is scarce and the seed set is small, ~4k pairs / ~100 queries):
- start from the pretrained all-MiniLM-L6-v2 *bi-encoder* and keep its signal: the frozen zero-shot
  cosine is an input feature, and the query/product towers start from the pretrained weights;
- fine-tune only the top `n_unfrozen` transformer layers; the frozen lower layers run once per unique
  text and their hidden states are cached (short max length), so an epoch costs a few seconds;
- a small head over [u*v, |u-v|, cos, cos_zero_shot, lexical/attribute matches];
- an ordinal (cumulative-logit) loss over the 4 grades, class-weighted, so the output is a proper
  grade distribution p0..p3 whose expected grade orders pairs;
- cut points on the expected grade tuned for quadratic kappa on the training queries.
The fitted grader saves to a directory (weights + JSON metadata with a version) and grades the rest.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..lexical import LEXICAL_FEATURES, lexical_matrix
from ..metrics import apply_thresholds, quadratic_kappa, tune_thresholds
from .base import Backend, LabelResult, OnResult, Pair

GRADER_FORMAT_VERSION = 1


def _clean(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return " ".join(str(v).split())


def encoder_text(product: Mapping[str, Any]) -> str:
    """Short product text for the encoder: what fits in ~64 tokens and matters most."""
    cat = _clean(product.get("category")).split(" > ")[-1]
    parts = [_clean(product.get("title")), _clean(product.get("brand")), _clean(product.get("color")), cat]
    return " | ".join(p for p in parts if p)


@dataclass
class GraderConfig:
    n_unfrozen: int = 2          # top transformer layers fine-tuned (0 = frozen encoder, head only)
    max_len_query: int = 24
    max_len_product: int = 64
    epochs: int = 4
    batch_size: int = 32
    lr_encoder: float = 3e-5
    lr_head: float = 2e-3
    weight_decay: float = 0.01
    hidden: int = 64
    dropout: float = 0.1
    class_weight_power: float = 0.5   # weight_k ~ freq_k^-power
    seed: int = 0
    num_threads: int = 2
    progress: bool = True


def _threads(n: int) -> None:
    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))


class _Encoder:
    """Pretrained MiniLM split at layer L-n: frozen bottom (cached), trainable top layers."""

    def __init__(self, path: str | Path):
        from transformers import AutoModel, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
        self.model.eval()
        self.n_layers = len(self.model.encoder.layer)

    @torch.inference_mode()
    def hidden(self, texts: Sequence[str], max_len: int, split: int, batch: int = 128,
               progress: bool = False, desc: str = "encode") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Hidden states after layer `split` (fp16), attention masks, and final mean-pooled embeddings."""
        from tqdm.auto import tqdm
        hs, ms, embs = [], [], []
        for i in tqdm(range(0, len(texts), batch), disable=not progress, desc=desc, leave=False):
            enc = self.tok(list(texts[i:i + batch]), padding="max_length", truncation=True, max_length=max_len,
                           return_tensors="pt")
            out = self.model(**enc, output_hidden_states=True)
            hs.append(out.hidden_states[split].to(torch.float16))
            m = enc["attention_mask"]
            ms.append(m.to(torch.bool))
            pooled = (out.last_hidden_state * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
            embs.append(nn.functional.normalize(pooled, dim=-1).numpy())
        if not hs:
            return (torch.zeros(0, max_len, 384, dtype=torch.float16), torch.zeros(0, max_len, dtype=torch.bool),
                    np.zeros((0, 384), dtype=np.float32))
        return torch.cat(hs), torch.cat(ms), np.concatenate(embs)


class _Tower(nn.Module):
    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        for layer in self.layers:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)


class _GraderNet(nn.Module):
    def __init__(self, layers: nn.ModuleList, dim: int, n_side: int, hidden: int, dropout: float):
        super().__init__()
        self.tower = _Tower(layers)
        self.mlp = nn.Sequential(nn.Linear(2 * dim + n_side, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))
        self.lin = nn.Linear(n_side, 1)
        self.side_norm = nn.BatchNorm1d(n_side, affine=False)
        # cumulative-logit cut points: b0 < b1 < b2 (b0 + cumsum softplus)
        self.b0 = nn.Parameter(torch.tensor(-1.0))
        self.gaps = nn.Parameter(torch.tensor([0.5, 0.5]))

    def cuts(self) -> torch.Tensor:
        return torch.cat([self.b0[None], self.b0 + torch.cumsum(nn.functional.softplus(self.gaps), 0)])

    def forward(self, qh, qm, ph, pm, side) -> torch.Tensor:
        u = self.tower(qh, qm)
        v = self.tower(ph, pm)
        cos = (u * v).sum(-1, keepdim=True)
        s = self.side_norm(torch.cat([cos, side], -1))
        return (self.mlp(torch.cat([u * v, (u - v).abs(), s], -1)) + self.lin(s)).squeeze(-1)

    def probs(self, f: torch.Tensor) -> torch.Tensor:
        gt = torch.sigmoid(f[:, None] - self.cuts()[None, :])  # P(y > k), k = 0,1,2
        ones = torch.ones_like(f)[:, None]
        zeros = torch.zeros_like(f)[:, None]
        cum = torch.cat([ones, gt, zeros], 1)
        return (cum[:, :-1] - cum[:, 1:]).clamp(min=1e-7)


class FineTunedGrader:
    """Fit on human-graded pairs, then grade any (query, product) pair into p0..p3."""

    def __init__(self, encoder_path: str | Path | None = None, config: GraderConfig | None = None):
        from ltr.data.models import default_encoder_path
        self.encoder_path = Path(encoder_path) if encoder_path else default_encoder_path()
        self.cfg = config or GraderConfig()
        self.thresholds: np.ndarray = np.array([0.5, 1.5, 2.5])
        self.net: _GraderNet | None = None
        self.meta: dict[str, Any] = {}
        self._enc: _Encoder | None = None

    # -- features ------------------------------------------------------------------------------
    @property
    def enc(self) -> _Encoder:
        if self._enc is None:
            self._enc = _Encoder(self.encoder_path)
        return self._enc

    @property
    def split(self) -> int:
        return self.enc.n_layers - self.cfg.n_unfrozen

    def _inputs(self, queries: Sequence[str], products: Sequence[Mapping[str, Any]], progress: bool):
        """Cached lower-layer states per unique text + side features [cos_zero_shot, lexical...]."""
        uq = sorted(set(queries))
        ptexts = [encoder_text(p) for p in products]
        up = sorted(set(ptexts))
        qh, qm, qe = self.enc.hidden(uq, self.cfg.max_len_query, self.split, progress=progress, desc="queries")
        ph, pm, pe = self.enc.hidden(up, self.cfg.max_len_product, self.split, progress=progress, desc="products")
        qidx = {q: i for i, q in enumerate(uq)}
        qi = np.array([qidx[q] for q in queries], dtype=int)
        pidx = {t: i for i, t in enumerate(up)}
        pi = np.array([pidx[t] for t in ptexts], dtype=int)
        cos0 = (qe[qi] * pe[pi]).sum(1, keepdims=True) if len(qi) else np.zeros((0, 1), np.float32)
        side = np.concatenate([cos0, lexical_matrix(queries, products)], 1).astype(np.float32)
        return (qh, qm, qi), (ph, pm, pi), torch.from_numpy(side)

    def _forward(self, q, p, side, idx) -> torch.Tensor:
        (qh, qm, qi), (ph, pm, pi) = q, p
        assert self.net is not None
        return self.net(qh[qi[idx]].float(), qm[qi[idx]], ph[pi[idx]].float(), pm[pi[idx]], side[idx])

    # -- fit / predict -------------------------------------------------------------------------
    def fit(self, queries: Sequence[str], products: Sequence[Mapping[str, Any]], grades: Sequence[int]
            ) -> "FineTunedGrader":
        """Fine-tune on human grades (0..3). Deterministic for a given seed and thread count."""
        g = np.asarray(grades, dtype=int)
        if len(g) != len(queries) or len(g) != len(products):
            raise ValueError("fit: queries, products and grades must have the same length.")
        if len(g) < 8:
            raise ValueError(f"fit: need at least 8 graded pairs, got {len(g)}. Fix: supply a larger seed set.")
        if g.min() < 0 or g.max() > 3:
            raise ValueError("fit: grades must be integers 0..3 (ESCI E/S/C/I = 3/2/1/0).")
        if self.cfg.n_unfrozen < 0 or self.cfg.n_unfrozen > 6:
            raise ValueError("GraderConfig.n_unfrozen must be between 0 (frozen encoder) and 6.")
        _threads(self.cfg.num_threads)
        torch.manual_seed(self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        t0 = time.perf_counter()
        q, p, side = self._inputs(queries, products, self.cfg.progress)
        t_cache = time.perf_counter() - t0
        self._fit_inputs(q, p, side, g, queries)
        self.meta["seconds_cache"] = round(t_cache, 2)
        self.meta["seconds_total"] = round(time.perf_counter() - t0, 2)
        return self

    def _fit_inputs(self, q, p, side, g: np.ndarray, queries: Sequence[str]) -> None:
        t0 = time.perf_counter()
        torch.manual_seed(self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        layers = nn.ModuleList(copy.deepcopy(self.enc.model.encoder.layer[self.split:]))
        self.net = _GraderNet(layers, self.enc.model.config.hidden_size, side.shape[1] + 1, self.cfg.hidden,
                              self.cfg.dropout)
        freq = np.bincount(g, minlength=4) + 1.0
        w = torch.tensor((freq / freq.sum()) ** -self.cfg.class_weight_power, dtype=torch.float32)
        w = w / (w * torch.tensor(freq / freq.sum(), dtype=torch.float32)).sum()
        enc_params = list(self.net.tower.parameters())
        enc_ids = {id(x) for x in enc_params}
        head = [x for x in self.net.parameters() if id(x) not in enc_ids]
        groups = [{"params": head, "lr": self.cfg.lr_head}]
        if enc_params:
            groups.insert(0, {"params": enc_params, "lr": self.cfg.lr_encoder})
        opt = torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)
        n = len(g)
        steps = self.cfg.epochs * math.ceil(n / self.cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[gr["lr"] for gr in groups],
                                                    total_steps=steps, pct_start=0.1)
        y = torch.from_numpy(g)
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, disable=not self.cfg.progress, desc="fine-tune grader", leave=False)
        self.net.train()
        losses = []
        for _ in range(self.cfg.epochs):
            order = rng.permutation(n)
            for i in range(0, n, self.cfg.batch_size):
                idx = order[i:i + self.cfg.batch_size]
                if len(idx) < 2:
                    continue
                f = self._forward(q, p, side, idx)
                pr = self.net.probs(f)
                yy = y[idx]
                loss = -(w[yy] * torch.log(pr[torch.arange(len(idx)), yy])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        self.net.eval()
        probs = self._predict(q, p, side)
        eg = probs @ np.arange(4)
        self.thresholds = tune_thresholds(eg, g)
        self.meta = {"format_version": GRADER_FORMAT_VERSION, "n_train_pairs": int(n),
                     "n_train_queries": len(set(queries)), "train_grade_counts": np.bincount(g, minlength=4).tolist(),
                     "train_kappa_in_sample": quadratic_kappa(g, apply_thresholds(eg, self.thresholds)),
                     "seconds_train": round(time.perf_counter() - t0, 2),
                     "final_loss": float(np.mean(losses[-20:])) if losses else None}

    @torch.inference_mode()
    def _predict(self, q, p, side, batch: int = 256) -> np.ndarray:
        assert self.net is not None
        self.net.eval()
        out = []
        for i in range(0, len(side), batch):
            idx = np.arange(i, min(i + batch, len(side)))
            out.append(self.net.probs(self._forward(q, p, side, idx)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 4), np.float32)

    def predict_proba(self, queries: Sequence[str], products: Sequence[Mapping[str, Any]],
                      progress: bool = False) -> np.ndarray:
        """Grade distributions, shape (n, 4), rows sum to 1."""
        if self.net is None:
            raise RuntimeError("grader is not fitted. Fix: call fit(...) or FineTunedGrader.load(dir).")
        if not len(queries):
            return np.zeros((0, 4), np.float64)
        _threads(self.cfg.num_threads)
        q, p, side = self._inputs(queries, products, progress)
        pr = self._predict(q, p, side).astype(np.float64)
        return pr / pr.sum(1, keepdims=True)

    def predict_grade(self, probs: np.ndarray) -> np.ndarray:
        return apply_thresholds(probs @ np.arange(4), self.thresholds)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        if self.net is None:
            raise RuntimeError("grader is not fitted; nothing to save.")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "weights.pt.tmp"
        torch.save(self.net.state_dict(), tmp)
        os.replace(tmp, d / "weights.pt")
        meta = {**self.meta, "version": self.version, "config": asdict(self.cfg),
                "thresholds": [float(x) for x in self.thresholds], "lexical_features": list(LEXICAL_FEATURES),
                "encoder": self.encoder_path.name if self.encoder_path else None}
        (d / "grader.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(d / "grader.json.tmp", d / "grader.json")
        return d

    @property
    def version(self) -> str:
        import hashlib
        if self.net is None:
            return "unfitted"
        h = hashlib.sha1()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        return f"v{GRADER_FORMAT_VERSION}-{h.hexdigest()[:10]}"

    @classmethod
    def load(cls, directory: str | Path, encoder_path: str | Path | None = None) -> "FineTunedGrader":
        d = Path(directory)
        if not (d / "grader.json").exists() or not (d / "weights.pt").exists():
            raise FileNotFoundError(f"{d}: no fitted grader (grader.json + weights.pt). Fix: fit one with "
                                    "labels.backends.grader.fit_grader_on_dataset(...) or pass the right dir.")
        meta = json.loads((d / "grader.json").read_text())
        if meta.get("format_version") != GRADER_FORMAT_VERSION:
            raise ValueError(f"{d}: grader format {meta.get('format_version')} != {GRADER_FORMAT_VERSION}. "
                             "Fix: re-fit the grader with this version of labels/.")
        cfg = GraderConfig(**meta["config"])
        g = cls(encoder_path, cfg)
        layers = nn.ModuleList(copy.deepcopy(g.enc.model.encoder.layer[g.split:]))
        g.net = _GraderNet(layers, g.enc.model.config.hidden_size, 2 + len(meta["lexical_features"]),
                           cfg.hidden, cfg.dropout)
        g.net.load_state_dict(torch.load(d / "weights.pt", weights_only=True))
        g.net.eval()
        g.thresholds = np.asarray(meta["thresholds"], dtype=float)
        g.meta = meta
        if meta.get("version") and g.version != meta["version"]:
            raise ValueError(f"{d}: weights do not match grader.json version {meta['version']}. "
                             "Fix: the directory is corrupt; re-fit or restore it.")
        return g


class ZeroShotBiEncoderGrader:
    """Baseline: pretrained bi-encoder cosine, mapped to grades by the training grade distribution."""

    def __init__(self, encoder_path: str | Path | None = None, max_len_query: int = 24, max_len_product: int = 64):
        from ltr.data.models import default_encoder_path
        self.enc = _Encoder(encoder_path or default_encoder_path())
        self.lq, self.lp = max_len_query, max_len_product
        self.thresholds = np.array([0.0, 0.0, 0.0])

    def cosine(self, queries: Sequence[str], products: Sequence[Mapping[str, Any]], progress: bool = False
               ) -> np.ndarray:
        uq = sorted(set(queries))
        pt = [encoder_text(p) for p in products]
        up = sorted(set(pt))
        _, _, qe = self.enc.hidden(uq, self.lq, 0, progress=progress, desc="queries")
        _, _, pe = self.enc.hidden(up, self.lp, 0, progress=progress, desc="products")
        qi = {q: i for i, q in enumerate(uq)}
        pi = {t: i for i, t in enumerate(up)}
        return np.array([float(qe[qi[q]] @ pe[pi[t]]) for q, t in zip(queries, pt)])

    def fit(self, queries, products, grades) -> "ZeroShotBiEncoderGrader":
        from ..metrics import quantile_thresholds
        self.thresholds = quantile_thresholds(self.cosine(queries, products), grades)
        return self

    def predict_grade(self, cos: np.ndarray) -> np.ndarray:
        return apply_thresholds(cos, self.thresholds)


class GraderBackend(Backend):
    """The fitted grader behind the labeler interface. No tokens, no dollars."""

    name = "grader"

    def __init__(self, grader_dir: str | Path, batch_size: int = 256, prompt_version: str = "grader-features-v1"):
        self.grader = FineTunedGrader.load(grader_dir)
        self.model = f"minilm-grader@{self.grader.version}"
        self.prompt_version = prompt_version
        self.batch_size = batch_size

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        out: list[LabelResult] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            probs = self.grader.predict_proba([p.query for p in chunk], [p.product for p in chunk])
            for pair, pr in zip(chunk, probs):
                r = LabelResult(pair.query_id, pair.product_id, tuple(float(x) for x in pr), self.name,
                                self.model, self.prompt_version,
                                hard_grade=int(self.grader.predict_grade(pr[None, :])[0]))
                out.append(r)
                if on_result:
                    on_result(pair, r)
        return out
