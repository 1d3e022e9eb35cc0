"""Typed configs for training, tuning and the experiments (pydantic v2, extra keys rejected).

Every knob has a default that runs on the built-in world, so an experiment is a config diff. Unknown
keys raise, naming the key, so a typo in a YAML file never silently falls back to a default.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ltr.data.config import StrictConfig
from ltr.data.metrics import ENGAGEMENT_METRICS
from ltr.data.schemas import FrameColumns


class EngagementConfig(StrictConfig):
    """Engagement label: weighted sum of smoothed click / add-to-cart / purchase rates."""

    click_weight: float = Field(1.0, ge=0)
    cart_weight: float = Field(3.0, ge=0)
    purchase_weight: float = Field(6.0, ge=0)
    smoothing: float = Field(20.0, ge=0, description="pseudo-impressions at the global rate (Bayesian prior)")
    normalize: Literal["query_max", "global_max", "none"] = "query_max"

    @model_validator(mode="after")
    def _some_weight(self) -> EngagementConfig:
        if self.click_weight + self.cart_weight + self.purchase_weight <= 0:
            raise ValueError("engagement weights are all 0. Fix: give click_weight, cart_weight or "
                             "purchase_weight a positive value.")
        return self


class TargetConfig(StrictConfig):
    """How a training label is made from the LLM score and engagement (see ltr.targets)."""

    content_source: str | None = Field(None, description="column holding the content score; None -> "
                                       "columns.content_score; 'grade' -> true grade / 3")
    alpha: float | None = Field(10.0, gt=0, description="sigmoid steepness; None -> raw score (no sigmoid)")
    beta: float = Field(0.5, ge=0, le=1, description="sigmoid midpoint")
    rescale: bool = True
    blend: Literal["weighted", "gated"] = "weighted"
    blend_weight: float = Field(0.7, ge=0, le=1, description="weight of the content label (1 = content only, "
                                "0 = engagement only)")
    gate: float = Field(0.5, ge=0, le=1, description="content threshold for the gated blend")
    engagement: EngagementConfig = Field(default_factory=EngagementConfig)
    label_mode: Literal["continuous", "bucket"] = "continuous"
    n_buckets: int = Field(32, ge=2, le=32, description="integer levels 0..n_buckets-1 when bucketing")


class ModelConfig(StrictConfig):
    """LambdaMART hyper-parameters shared by the XGBoost ranker and the LightGBM baseline; each field is the
    rankers' parameter of the same name (ltr.rankers), so a config key reaches the estimator as it is."""

    kind: Literal["xgboost", "lightgbm", "xgboost_dask"] = Field(
        "xgboost", description="xgboost_dask: the XGBoost ranker trained on the Dask cluster of `compute` "
        "(a run with compute.engine: dask picks it for xgboost by itself)")
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.1, gt=0, le=1)
    max_depth: int = Field(6, ge=1, le=16)
    min_child_weight: float = Field(1.0, ge=0)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(256, ge=2)
    early_stopping_rounds: int | None = Field(30, ge=1)
    validation_fraction: float = Field(0.2, ge=0, lt=1, description="share of training queries held out "
                                       "for early stopping")
    eval_at: int = Field(10, ge=1)
    n_jobs: int = Field(2, ge=1)
    monotone: bool = Field(False, description="hold the score to the directions features/names.py MONOTONE "
                           "declares (similarity and coverage only ever help): a guard against trees that learn "
                           "noise in the labels (docs/homedepot.md)")


class TrainConfig(StrictConfig):
    seed: int = 0
    columns: FrameColumns = Field(default_factory=FrameColumns)
    target: TargetConfig = Field(default_factory=TargetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    features: list[str] | None = Field(None, description="feature columns; None -> every numeric column "
                                       "that is not reserved (ids, label inputs, evaluation data)")
    exclude_feature_prefixes: list[str] = Field(default_factory=list)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of queries held out for evaluation")
    k: int = Field(10, ge=1, description="cut-off for NDCG and Irrelevant@k")
    engagement_metric: str = Field("cart_recall@10", description="metric key from ltr.data.metrics used as the "
                                   "engagement objective")
    head_quantile: float = Field(0.8, gt=0, lt=1, description="queries above this impression-volume quantile "
                                 "are 'head' when the frame has no segment column")
    label_source: str = Field("llm", description="provenance of the content labels, for tracking")
    cold_query_share: float = Field(0.0, ge=0, lt=1, description="share of training queries whose engagement "
                                    "features are masked (NaN) in training and labelled by content alone, as "
                                    "for queries without logs (opt-in: on the built-in world 0.5 cost warm and "
                                    "cold NDCG@10; see docs/cold.md)")
    cold_product_share: float = Field(0.0, ge=0, lt=1, description="share of products whose engagement "
                                      "features are masked in training, as for products without history")
    cold_route: Literal["auto", "zero_shot", "off"] = Field(
        "auto", description="auto: the registered model carries a scorer for queries whose candidates have no "
        "engagement at all, chosen by cross-validation on the training queries (ltr.cold_route), where the trees "
        "keep them unless another scorer beats them beyond noise; zero_shot: the zero-shot bi-encoder is the "
        "scorer to beat, and the whole choice must beat it out of fold too (the gate; docs/cold.md: "
        "better on average on the ESCI sample, worse on a synthetic shop); off: the trees score every query")

    @field_validator("engagement_metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        base = v.split("@")[0]
        if base not in ENGAGEMENT_METRICS or "@" not in v:
            raise ValueError(f"engagement_metric {v!r} is unknown. Fix: use one of "
                             f"{', '.join(m + '@K' for m in ENGAGEMENT_METRICS)} (e.g. cart_recall@10).")
        return v


class TuneConfig(StrictConfig):
    """Optuna multi-objective search over the label transform and a few model parameters."""

    n_trials: int = Field(30, ge=1, description="target total of finished trials in the study: a re-run "
                          "continues a killed study and adds nothing to a finished one")
    study_name: str = "ltr-tune"
    storage: str = Field("sqlite:///mlruns/optuna.db", description="Optuna RDB storage URL (resumable)")
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    alpha_range: tuple[float, float] = (1.0, 40.0)
    beta_range: tuple[float, float] = (0.2, 0.8)
    blend_weight_range: tuple[float, float] = (0.0, 1.0)
    tune_model_params: bool = True
    learning_rate_range: tuple[float, float] = (0.03, 0.3)
    max_depth_range: tuple[int, int] = (3, 8)
    min_child_weight_range: tuple[float, float] = (0.5, 20.0)
    tuning_fraction: float = Field(0.25, gt=0, lt=1, description="share of training queries that score "
                                   "trials (never the test queries)")
    engagement_tolerance: float = Field(0.01, ge=0, lt=1, description="operating point: best content NDCG "
                                        "with engagement >= (1 - tolerance) x engagement-only model")
    log_trials: bool = True

    @field_validator("alpha_range", "beta_range", "blend_weight_range", "learning_rate_range",
                     "max_depth_range", "min_child_weight_range")
    @classmethod
    def _ordered(cls, v: tuple) -> tuple:
        if not v[0] <= v[1]:
            raise ValueError(f"range {v} is reversed. Fix: write it as (low, high).")
        return v


class TunedParams(StrictConfig):
    alpha: float = Field(gt=0)
    beta: float = Field(ge=0, le=1)
    blend_weight: float = Field(ge=0, le=1)


ARM_GROUPS = ("a", "b", "c", "d", "e")


class ExperimentConfig(StrictConfig):
    """The paper's experiment arms; see ltr.experiments."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3,
                             description="at least 3 seeds: every arm reports mean and spread")
    train: TrainConfig = Field(default_factory=TrainConfig)
    arms: list[Literal["a", "b", "c", "d", "e", "f"]] = Field(
        default_factory=lambda: list(ARM_GROUPS), description="(f), engagement labels: smoothed rates vs "
        "LambdaMART on raw clicks, naive and position-debiased (ltr.unbiased), is opt-in: it needs the log")
    tuned: TunedParams | None = Field(None, description="α, β, blend weight of the 'tuned sigmoid' arm; "
                                      "None -> tune (if `tune` is set) or take train.target")
    tune: TuneConfig | None = Field(None, description="run a study on the first seed to get `tuned`")
    alpha_grid: list[float] = Field(default_factory=lambda: [2.0, 8.0, 20.0])
    beta_grid: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    ce_prefix: str = "ce_"
    grader_column: str | None = Field(None, description="arm (d) grader scores; None -> columns.content_score")
    hopit_llm_column: str = "ce_score"
    hopit_purchase_column: str = "ce_purchase_score"
    click_window: Literal["labels", "features"] = Field(
        "labels", description="arm (f)'s impressions: 'labels' = from the engagement cutoff on, the window the "
        "smoothed-rate labels count (features are as of the cutoff, so no click is both feature and label); "
        "'features' = before the cutoff, the window the engagement features count (more clicks, but the "
        "eng_* features then summarise the very clicks the arm learns)")
    click_bias_norm: float = Field(1.0, ge=0, description="arm (f): XGBoost's lambdarank_bias_norm (its "
                                   "default); t+ = loss ratio ** (1 / (1 + norm))")
    click_n_boot: int = Field(50, ge=0, description="arm (f): bootstrap replicates of the harvested curve")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat. Fix: give distinct seeds.")
        return v
