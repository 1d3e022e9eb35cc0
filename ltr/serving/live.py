"""One registered model version with everything it needs to score a request, swapped whole on a reload.

A request takes the service's current `LiveModel` once, at its start, and uses only that object: a reload
that swaps in a new version meanwhile cannot mix two versions' features, cross-encoders or scores in one
response, and every response names the version that scored it.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.ondemand import CE_FEATURE, OnDemandFeatures
from ltr.train import engagement_columns

from .assemble import FeatureAssembler
from .ce_batcher import CEJob, CrossEncoderBatcher
from .config import ServingConfig
from .model import LoadedModel


@dataclass
class LiveModel:
    model: LoadedModel
    assembler: FeatureAssembler
    ondemand: OnDemandFeatures
    batcher: CrossEncoderBatcher | None
    ce_col: int | None  # where ce_score sits in the model's feature order (None: the model does not use it)
    closed: threading.Event = field(default_factory=threading.Event)
    eng_cols: list[int] = field(default_factory=list)  # where the engagement features sit

    @property
    def version(self) -> str | None:
        return self.model.version

    def cold_route(self, X: np.ndarray) -> Any:
        """The model's cold route when it has an active one and no candidate of this request has any
        engagement (`ltr.cold_route`), else None: the trees score the request."""
        route = self.model.cold_route
        if route is None or not route.active or not self.eng_cols:
            return None
        return route if np.isnan(X[:, self.eng_cols]).all() else None

    def foreground(self) -> Any:
        """Around one request's ranking (`CrossEncoderBatcher.foreground`); a no-op without a batcher."""
        return self.batcher.foreground() if self.batcher is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Stop the cross-encoder thread; requests still holding this object get first-phase rankings."""
        self.closed.set()
        if self.batcher is not None:
            self.batcher.close()


def _remember(ondemand: OnDemandFeatures):
    def hook(job: CEJob, sl: slice, scores: np.ndarray) -> None:
        query, docs = job.tag
        ondemand.ce_remember(query, docs[sl], scores)
    return hook


def build_live(lm: LoadedModel, ondemand: OnDemandFeatures, store: Any, cfg: ServingConfig,
               on_missing: str = "error", warm: bool = True) -> LiveModel:
    """Assemble a model's serving parts; `ondemand` must already score with `lm`'s cross-encoder."""
    assembler = FeatureAssembler(lm.features, ondemand, store, on_missing=on_missing,
                                 row_cache_rows=cfg.row_cache_rows)
    if warm:
        assembler.warm()
    ce_col = lm.features.index(CE_FEATURE) if CE_FEATURE in lm.features else None
    batcher = None
    if ce_col is not None and assembler.sources[CE_FEATURE] in ("ondemand", "store+ondemand"):
        batcher = CrossEncoderBatcher(ondemand.ce_score_texts, batch_size=cfg.ce_batch_size,
                                      max_jobs=cfg.ce_max_jobs, on_scored=_remember(ondemand))
        if warm:
            _, texts = ondemand.ce_lookup("a query to time the cross-encoder by",
                                          np.arange(min(cfg.ce_batch_size, len(ondemand.products))))
            batcher.calibrate(["a query to time the cross-encoder by"] * len(texts), texts)
    eng_cols = [lm.features.index(f) for f in engagement_columns(lm.features)]
    return LiveModel(model=lm, assembler=assembler, ondemand=ondemand, batcher=batcher, ce_col=ce_col,
                     eng_cols=eng_cols)


__all__ = ["LiveModel", "build_live"]
