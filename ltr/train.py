"""Training stage: training frame + TrainConfig -> fitted ranker + held-out metrics.

A training frame has one row per (query, product): ids, feature columns (floats, NaN allowed), the LLM
content score, training-window engagement counts, and for evaluation only the true grade and held-out
engagement. Raw engagement counts are label inputs, never features (that would leak the label); the
engagement *features* (rates, debiased CTR, ...) come from Feast under their own names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from features.names import FAMILY_ALIASES, select, view_features
from ltr.data import metrics as M

from .rankers import RankerError, make_ranker, split_frame
from .targets import make_labels
from .train_config import TrainConfig


def feature_columns(frame: pd.DataFrame, cfg: TrainConfig | None = None) -> list[str]:
    """The model's feature list, in frame order: what cfg.features names (features and Feast feature
    families, see features.names), or every numeric non-reserved column; minus excluded prefixes."""
    cfg = cfg or TrainConfig()
    if cfg.features is not None:
        families = set(view_features()) | set(FAMILY_ALIASES)
        missing = [f for f in cfg.features if f not in frame.columns and f not in families]
        if missing:
            raise RankerError(f"features {missing} are not in the training frame. Fix: add them to the frame "
                              "(Feast feature service) or remove them from `features`.")
        feats = select(cfg.features, frame.columns)
    else:
        reserved = set(cfg.columns.reserved())
        feats = [c for c in frame.columns if c not in reserved and pd.api.types.is_numeric_dtype(frame[c])
                 and not pd.api.types.is_bool_dtype(frame[c])]
    feats = [f for f in feats if not any(f.startswith(p) for p in cfg.exclude_feature_prefixes)]
    if not feats:
        raise RankerError("no feature columns left. Fix: list `features` or relax `exclude_feature_prefixes`.")
    return feats


def ranker_from_config(cfg: TrainConfig, ndcg_exp_gain: bool = False):
    """The ranker `cfg.model` describes: ModelConfig's fields are the rankers' own parameter names, so
    they pass through as they are (LightGBM bins at most 255 and buckets continuous labels)."""
    params = cfg.model.model_dump(exclude={"kind"}) | {"random_state": cfg.seed}
    if cfg.model.kind == "xgboost":
        return make_ranker("xgboost", ndcg_exp_gain=ndcg_exp_gain, **params)
    return make_ranker("lightgbm", **(params | {"max_bin": min(cfg.model.max_bin, 255),
                                                "n_buckets": cfg.target.n_buckets}))


def fit_ranker(frame: pd.DataFrame, cfg: TrainConfig | None = None, features: list[str] | None = None):
    """Make labels from `frame` per cfg.target and fit the configured ranker on its features."""
    cfg = cfg or TrainConfig()
    feats = features or feature_columns(frame, cfg)
    y, exp_gain = make_labels(frame, cfg.target, cfg.columns)
    model = ranker_from_config(cfg, ndcg_exp_gain=exp_gain)
    model.fit(frame[feats], y, frame[cfg.columns.query_id].to_numpy())
    return model


def evaluate_ranker(model, frame: pd.DataFrame, cfg: TrainConfig | None = None,
                    missing: str = "error") -> tuple[dict[str, float], pd.DataFrame]:
    """(summary metrics, per-query metrics) of `model` on `frame` (grades / held-out engagement needed)."""
    cfg = cfg or TrainConfig()
    scores = model.predict(frame, missing=missing)
    pq = M.per_query_metrics(frame, scores, cfg.columns, cfg.k, M.default_metrics(cfg.engagement_metric),
                             cfg.head_quantile)
    return M.summarize(pq), pq


@dataclass
class TrainResult:
    model: Any
    features: list[str]
    metrics: dict[str, float]
    per_query: pd.DataFrame
    train_frame: pd.DataFrame
    test_frame: pd.DataFrame
    config: TrainConfig
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> float:
        return self.metrics.get(f"ndcg@{self.config.k}", float("nan"))

    @property
    def engagement(self) -> float:
        return self.metrics.get(self.config.engagement_metric, float("nan"))


def train_and_evaluate(frame: pd.DataFrame, cfg: TrainConfig | None = None,
                       test_frame: pd.DataFrame | None = None) -> TrainResult:
    """Split by query (unless a test frame is given), train on the rest, evaluate on the held-out queries."""
    cfg = cfg or TrainConfig()
    if test_frame is None:
        train, test = split_frame(frame, cfg.columns.query_id, [1 - cfg.test_fraction, cfg.test_fraction], cfg.seed)
    else:
        train, test = frame, test_frame
    feats = feature_columns(train, cfg)
    model = fit_ranker(train, cfg, feats)
    summary, pq = evaluate_ranker(model, test, cfg)
    return TrainResult(model, feats, summary, pq, train, test, cfg)
