"""The main job's config: one validated YAML file drives every stage (`ltr run --config ...`).

Each package owns its section's model (labels.config, features.config, ltr.train_config, ...); this
module only composes them, so the CLI and notebooks share one schema.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from features import names
from features.config import FeaturesConfig
from features.crossencoder import CrossEncoderConfig
from labels.config import LabelConfig
from ltr.data.config import StrictConfig
from ltr.data.engine import ComputeConfig
from ltr.promotion import PromotionConfig
from ltr.retrieval.config import MiningConfig, RetrievalConfig
from ltr.sim.world import WorldConfig
from ltr.tracking import DEFAULT_TRACKING_URI
from ltr.train_config import ExperimentConfig, TrainConfig, TuneConfig


class DatasetConfig(StrictConfig):
    source: Literal["world", "dir", "esci"] = "world"
    path: Optional[Path] = Field(None, description="dataset dir (source=dir) or ESCI folder (source=esci)")
    world: WorldConfig = Field(default_factory=WorldConfig)
    simulate_engagement: bool = Field(True, description="simulate logs for a catalog that has none")
    simulated_relevance: Literal["lexical", "judgments"] = Field(
        "lexical", description="what simulated shoppers find relevant: word overlap (independent of the "
        "judgments the run is evaluated on) or the judgments themselves (their engagement then leaks them)")


class TrackingConfig(StrictConfig):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = "ltr"
    model_name: str = "ltr-ranker"
    enabled: bool = True
    cross_encoder_int8: bool = Field(True, description="export the registered model's cross-encoder to ONNX "
                                     "int8 at registration (~26 s on 2 cores) so the service loads it instead "
                                     "of exporting at start (ServingConfig.ce_backend 'auto')")


class WindowConfig(StrictConfig):
    label_days: int = Field(7, ge=1, description="engagement labels (and held-out engagement) come from the "
                            "last N days of the log; features are read as of the start of that window")


class EvaluateConfig(StrictConfig):
    esci_dir: Optional[Path] = Field(None, description="judged dataset to evaluate the champion on; "
                                     "default: ../shared/data/esci when present")
    enabled: bool = Field(True, description="off when the run's own dataset is that judged dataset: the "
                          "run's held-out queries (the cold-start report) are then the honest figure")


class RunConfig(StrictConfig):
    seed: int = 7
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    cross_encoder: CrossEncoderConfig = Field(default_factory=CrossEncoderConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    experiments: ExperimentConfig = Field(default_factory=ExperimentConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    train_window: WindowConfig = Field(default_factory=WindowConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="engine: local | dask: "
                                   "training, batch scoring and labelling on a Dask cluster")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)

    @model_validator(mode="after")
    def _one_train_section(self) -> RunConfig:
        """`train.features` must name what the Feast repo declares; the experiments train like the main
        model unless the config gives them a `train` section of their own."""
        if self.train.features is not None:
            names.resolve(self.train.features, self.features.windows_days, key="train.features")
        if "train" not in self.experiments.model_fields_set:
            self.experiments = self.experiments.model_copy(update={"train": self.train})
        return self
