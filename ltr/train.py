"""Training stage: training frame + TrainConfig -> fitted ranker + held-out metrics.

A training frame has one row per (query, product): ids, feature columns (floats, NaN allowed), the LLM
content score, training-window engagement counts, and for evaluation only the true grade and held-out
engagement. Raw engagement counts are label inputs, never features (that would leak the label); the
engagement *features* (rates, debiased CTR, ...) come from Feast under their own names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.names import FAMILY_ALIASES, family_of, select, view_features
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
    if cfg.model.kind == "xgboost_dask":  # each worker uses its own threads: n_jobs=2 per worker oversubscribes
        from .dask_ranker import DaskXGBLambdaMART  # imports dask only when asked for
        return DaskXGBLambdaMART(ndcg_exp_gain=ndcg_exp_gain, **(params | {"n_jobs": None}))
    if cfg.model.kind == "xgboost":
        return make_ranker("xgboost", ndcg_exp_gain=ndcg_exp_gain, **params)
    return make_ranker("lightgbm", **(params | {"max_bin": min(cfg.model.max_bin, 255),
                                                "n_buckets": cfg.target.n_buckets}))


# --- cold traffic -----------------------------------------------------------------------------------

ENGAGEMENT_VIEWS = ("engagement_qp", "engagement_product")


def engagement_columns(columns) -> list[str]:
    """The engagement features among `columns` (any window), by the Feast repo's names."""
    return [c for c in columns if family_of(c) in ENGAGEMENT_VIEWS]


def mask_engagement(frame: pd.DataFrame, rows: np.ndarray | None = None) -> pd.DataFrame:
    """A copy with the engagement features NaN (in `rows`, a boolean mask, or everywhere): what the model
    sees for a query or product that has no logs."""
    out = frame.copy()
    for c in engagement_columns(out.columns):
        out[c] = out[c].astype("float64")
        if rows is None:
            out[c] = np.nan
        else:
            out.loc[rows, c] = np.nan
    return out


def cold_rows(frame: pd.DataFrame, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(rows of cold queries, rows of cold queries or products): seeded shares of the frame's queries and
    products that training treats as having no history."""
    rng = np.random.default_rng([cfg.seed, 16])
    qcol, pcol = cfg.columns.query_id, cfg.columns.product_id
    qs, ps = np.array(sorted(frame[qcol].unique())), np.array(sorted(frame[pcol].unique()))
    cold_q = set(rng.choice(qs, size=int(round(cfg.cold_query_share * len(qs))), replace=False))
    cold_p = set(rng.choice(ps, size=int(round(cfg.cold_product_share * len(ps))), replace=False))
    q_rows = frame[qcol].isin(cold_q).to_numpy()
    return q_rows, q_rows | frame[pcol].isin(cold_p).to_numpy()


def cold_training_frame(frame: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
    """Engagement masked for a seeded share of queries and of products.

    Why: trained only on queries that all have logs, the trees spend their gain on engagement and rank a
    new query (engagement absent) at random. Real traffic has many queries and products without history;
    masking a share of them teaches the trees the content-only path, which XGBoost takes for missing values.
    A cold product loses its own and its pairs' engagement; a cold query loses all of its rows'.
    """
    if not (cfg.cold_query_share or cfg.cold_product_share) or not engagement_columns(frame.columns):
        return frame
    return mask_engagement(frame, cold_rows(frame, cfg)[1])


def training_labels(frame: pd.DataFrame, cfg: TrainConfig) -> tuple[np.ndarray, bool]:
    """The configured labels, except that a cold query's rows get the content label alone: a query without
    history has no engagement to blend in, and its rows are where the trees learn to rank on content."""
    y, exp_gain = make_labels(frame, cfg.target, cfg.columns)
    w = cfg.target.blend_weight
    if not cfg.cold_query_share or not 0 < w < 1 or not engagement_columns(frame.columns):
        return y, exp_gain
    q_rows = cold_rows(frame, cfg)[0]
    content, _ = make_labels(frame, cfg.target.model_copy(update={"blend_weight": 1.0}), cfg.columns)
    return np.where(q_rows, content, y), exp_gain


def content_only_config(cfg: TrainConfig) -> TrainConfig:
    """The content-only arm: content labels (blend weight 1) and no engagement features. A model that uses
    engagement must not rank cold queries worse than this one does."""
    d = cfg.model_dump()
    d["target"]["blend_weight"] = 1.0
    d["exclude_feature_prefixes"] = list(d["exclude_feature_prefixes"]) + ["eng_"]
    d["cold_query_share"] = d["cold_product_share"] = 0.0
    return TrainConfig.model_validate(d)


def fit_ranker(frame: pd.DataFrame, cfg: TrainConfig | None = None, features: list[str] | None = None):
    """Make labels from `frame` per cfg.target and fit the configured ranker on its features, with the
    engagement of a share of queries and products masked (`cold_training_frame`)."""
    cfg = cfg or TrainConfig()
    feats = features or feature_columns(frame, cfg)
    y, exp_gain = training_labels(frame, cfg)
    model = ranker_from_config(cfg, ndcg_exp_gain=exp_gain)
    X = cold_training_frame(frame, cfg)[feats]
    model.fit(X, y, frame[cfg.columns.query_id].to_numpy())
    return model


def evaluate_ranker(model, frame: pd.DataFrame, cfg: TrainConfig | None = None,
                    missing: str = "error") -> tuple[dict[str, float], pd.DataFrame]:
    """(summary metrics, per-query metrics) of `model` on `frame` (grades / held-out engagement needed),
    warm (the frame as it is) and cold (engagement features absent, as for queries without logs: keys and
    columns ending in '/cold')."""
    cfg = cfg or TrainConfig()
    metrics = M.default_metrics(cfg.engagement_metric)
    pq = M.per_query_metrics(frame, model.predict(frame, missing=missing), cfg.columns, cfg.k, metrics,
                             cfg.head_quantile)
    summary = M.summarize(pq)
    cold = mask_engagement(frame)
    cold_pq = M.per_query_metrics(cold, model.predict(cold, missing=missing), cfg.columns, cfg.k, metrics,
                                  cfg.head_quantile)
    summary.update({f"{c}/cold": float(cold_pq[c].mean()) for c in cold_pq.columns
                    if c != "segment" and cold_pq[c].notna().any()})
    pq = pq.join(cold_pq.drop(columns=["segment"], errors="ignore").add_suffix("/cold"))
    return summary, pq


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
