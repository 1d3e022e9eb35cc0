"""`LabelConfig`: the validated configuration of a labelling run (pydantic v2, unknown keys rejected).

The default backend is the fine-tuned local grader: it runs offline, costs nothing, and is fitted on
the dataset's own human judgments (the seed set) when no fitted grader directory is given.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ltr.data.config import StrictConfig

from .prompts import DEFAULT_PROMPT_VERSION, PROMPTS

BackendName = Literal["grader", "openai", "causal_lm", "imported", "cascade"]


class OpenAISettings(StrictConfig):
    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1; env OPENAI_BASE_URL")
    model: str = "gpt-4o-mini"
    api_key: str | None = Field(None, description="prefer api_key_env; never written to outputs")
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1, le=512)
    requests_per_second: float | None = Field(None, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    timeout_s: float = Field(30.0, gt=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(20.0, ge=0)
    max_tokens: int = Field(4, ge=1, le=512)
    top_logprobs: int = Field(10, ge=0, le=20)
    temperature: float = Field(0.0, ge=0, le=2)
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="server-specific request fields merged into every request, e.g. llama.cpp "
                    "{'grammar': 'root ::= [0-3]'} or vLLM {'guided_choice': ['0','1','2','3']}",
    )


class CausalLMSettings(StrictConfig):
    path: str = Field(..., description="local transformers model directory")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=32)


class GraderSettings(StrictConfig):
    dir: str | None = Field(None, description="fitted grader dir; None = fit on the dataset's judgments")
    epochs: int = Field(4, ge=0, description="unused since grader format 2 (the head fits to convergence)")
    n_unfrozen: int = Field(0, ge=0, le=0, description="must be 0: grader format 2 does not fine-tune layers")
    seed: int = 0
    features: list[str] | None = Field(
        None, description="None = the default recipe; e.g. add 'maxsim_mean', 'maxsim_min' (token-level MaxSim)")


class ImportedSettings(StrictConfig):
    path: str
    format: Literal["esci", "opensearch", "trec", "csv"]
    products_path: str | None = Field(None, description="ESCI products parquet (for product ids), optional")


class TierConfig(StrictConfig):
    backend: Literal["grader", "openai", "causal_lm"]
    openai: OpenAISettings | None = None
    causal_lm: CausalLMSettings | None = None
    grader: GraderSettings | None = None
    escalate_if_margin_below: float | None = Field(None, ge=0, le=1)
    escalate_if_entropy_above: float | None = Field(None, ge=0)


class CascadeSettings(StrictConfig):
    tiers: list[TierConfig] = Field(..., min_length=1)


class LabelConfig(StrictConfig):
    backend: BackendName = "grader"
    prompt_version: str = DEFAULT_PROMPT_VERSION
    cache_path: str | None = Field(None, description="SQLite cache; default: <out dir>/label_cache.sqlite")
    max_dollars: float | None = Field(None, ge=0)
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict, description="USD per 1M tokens in/out")
    grader: GraderSettings = Field(default_factory=GraderSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    causal_lm: CausalLMSettings | None = None
    imported: ImportedSettings | None = None
    cascade: CascadeSettings | None = None
    calibrate: bool = Field(True, description="report agreement with the dataset's human judgments")

    @field_validator("prompt_version")
    @classmethod
    def _known_prompt(cls, v: str) -> str:
        if v not in PROMPTS:
            raise ValueError(f"unknown prompt_version {v!r}; known: {sorted(PROMPTS)}")
        return v

    @model_validator(mode="after")
    def _needs(self) -> "LabelConfig":
        if self.backend == "causal_lm" and self.causal_lm is None:
            raise ValueError("backend 'causal_lm' needs a causal_lm section with `path` (a local model dir)")
        if self.backend == "imported" and self.imported is None:
            raise ValueError("backend 'imported' needs an imported section with `path` and `format`")
        if self.backend == "cascade" and self.cascade is None:
            raise ValueError("backend 'cascade' needs a cascade section with `tiers`")
        return self
