"""`LabelConfig`: the validated configuration of a labelling run (pydantic v2, unknown keys rejected).

The default backend is the fine-tuned local grader: it runs offline, costs nothing, and is fitted on
the dataset's own human judgments (the seed set) when no fitted grader directory is given.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ltr.data.config import StrictConfig

from .prompts import DEFAULT_PROMPT_VERSION, PROMPTS

BackendName = Literal["grader", "openai", "causal_lm", "imported", "cascade", "judges"]


class ProfileSettings(StrictConfig):
    """Overrides of the request shape guessed from the model name (see labels/model_profiles.py): an
    Azure deployment or a local alias may hide that a model is a reasoning model. `profile: reasoning`
    is short for `profile: {kind: reasoning}`."""

    kind: Literal["auto", "chat", "reasoning"] = "auto"
    token_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    temperature: bool | None = Field(None, description="whether the request may carry a temperature")
    logprobs: bool | None = Field(None, description="whether the server returns token logprobs")
    reasoning_effort: Literal["omit", "none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, description="None: the profile's default (low for reasoning models); omit: send none")


class OpenAISettings(StrictConfig):
    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1; env OPENAI_BASE_URL")
    model: str = "gpt-4o-mini"
    api_key: str | None = Field(None, description="prefer api_key_env; never written to outputs")
    api_key_env: str = "OPENAI_API_KEY"
    azure_endpoint: str | None = Field(None, description="Azure OpenAI resource, e.g. https://RES.openai.azure."
                                       "com; `model` is then the deployment name; needs api_version")
    api_version: str | None = Field(None, description="Azure OpenAI api-version, e.g. 2024-10-21")
    concurrency: int = Field(8, ge=1, le=512)
    requests_per_second: float | None = Field(None, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    timeout_s: float = Field(30.0, gt=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(20.0, ge=0, description="cap of our own exponential backoff")
    retry_after_max_s: float = Field(120.0, ge=0, description="longest server-requested wait (Retry-After, "
                                     "retry-after-ms) honoured; a longer one fails the pair at once")
    max_tokens: int | None = Field(None, ge=1, le=65536, description="output budget; None: 4 for a digit, "
                                   "256 for a JSON answer, 2048 for a reasoning model")
    top_logprobs: int = Field(10, ge=0, le=20)
    temperature: float = Field(0.0, ge=0, le=2, description="sent only where the profile allows one")
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    output: Literal["auto", "logprobs", "json_schema", "text"] = Field(
        "auto", description="auto: logprobs where the profile has them, else the structured (JSON) answer")
    structured_via: Literal["response_format", "guided_json", "json_schema", "json_object"] = Field(
        "response_format", description="how the JSON schema is sent: OpenAI/Azure/Ollama/vLLM response_format, "
                                       "vLLM's guided_json, llama.cpp llama-server's json_schema field, or "
                                       "response_format {type: json_object, schema} (llama-cpp-python's server)")
    samples: int = Field(1, ge=1, le=32, description="n answers per pair, averaged into the distribution")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="server-specific request fields merged into every request, e.g. llama.cpp "
                    "{'grammar': 'root ::= [0-3]'} or vLLM {'guided_choice': ['0','1','2','3']}",
    )

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    def model_profile(self):
        """The resolved `ModelProfile` (model name + overrides)."""
        from .model_profiles import profile_for
        return profile_for(self.model, **self.profile.model_dump())

    def output_mode(self) -> str:
        from .model_profiles import output_mode
        return output_mode(self.model_profile(), self.output, self.samples)

    @model_validator(mode="after")
    def _coherent(self) -> "OpenAISettings":
        prof = self.model_profile()
        self.output_mode()  # raises with the fix when the output needs logprobs the profile lacks
        if self.samples > 1 and prof.temperature and self.temperature == 0:
            raise ValueError(f"samples: {self.samples} at temperature 0 draws {self.samples} identical answers. "
                             "Fix: set temperature (e.g. 1.0), or samples: 1.")
        if self.azure_endpoint and not self.api_version:
            raise ValueError("azure_endpoint needs api_version (e.g. 2024-10-21). Fix: set openai.api_version.")
        return self


class CausalLMSettings(StrictConfig):
    path: str = Field(..., description="local transformers model directory")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=32)


#: features computed from embeddings; every other grader feature name must be one of LEXICAL_FEATURES.
#: maxsim_*: ColBERT-style late interaction on the frozen encoder's token vectors: for each query word piece
#: the best cosine over the product text's word pieces, then the mean (semantic term coverage) and the min
#: (the worst-covered query term) over the query's pieces. Same forward pass as `cos`, no extra encoding.
EMBEDDING_FEATURES = ("cos", "cos_refz", "cos_title", "maxsim_mean", "maxsim_min")
MAXSIM_FEATURES = ("maxsim_mean", "maxsim_min")
#: chosen on query-split CV of the ESCI sample (bench/bench_grader.py): the zero-shot cosine, semantic-free
#: term coverage (exact and prefix), and negation ("bottle without straw": the excluded term in the title).
#: MAXSIM_FEATURES are opt-in: see labels/backends/grader.py for what they gave.
DEFAULT_FEATURES = ("cos", "q_partial_text", "q_in_text", "has_negation", "neg_in_title")


class GraderConfig(StrictConfig):
    """The fine-tuned grader: where a fitted one lives (`dir`), or how to fit one on the seed set.

    Everything but `dir` and `progress` is part of the fitted model's identity (`fingerprint_dict`).
    """

    dir: str | None = Field(None, description="fitted grader dir; None = fit on the dataset's judgments")
    features: tuple[str, ...] = Field(DEFAULT_FEATURES, description="grader inputs; add 'maxsim_mean', "
                                      "'maxsim_min' for token-level MaxSim")
    l2: float = Field(50.0, ge=0, description="ridge penalty on the standardised coefficients")
    class_weight_power: float = Field(0.0, description="weight_k ~ freq_k^-power (0 = plain likelihood)")
    inner_folds: int = Field(5, ge=0, description="query-grouped inner CV for the kappa cut points")
    n_reference: int = Field(256, ge=1, description="catalogue products kept as the per-query cosine reference")
    max_len_query: int = Field(24, ge=1)
    max_len_product: int = Field(64, ge=1)
    encode_batch: int = Field(64, ge=1)
    seed: int = 0
    num_threads: int = Field(1, ge=1)
    progress: bool = True
    epochs: int = Field(4, ge=0, description="unused since grader format 2 (the head fits to convergence)")
    n_unfrozen: int = Field(0, ge=0, le=0, description="must be 0: grader format 2 does not fine-tune layers")

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> tuple[str, ...]:
        from .lexical import LEXICAL_FEATURES
        v = DEFAULT_FEATURES if v is None else tuple(v)
        unknown = [f for f in v if f not in EMBEDDING_FEATURES and f not in LEXICAL_FEATURES]
        if unknown or not v:
            raise ValueError(f"unknown {unknown or 'empty list'}. Fix: choose from "
                             f"{list(EMBEDDING_FEATURES) + list(LEXICAL_FEATURES)}.")
        return v

    def fingerprint_dict(self) -> dict[str, Any]:
        """What determines the fitted model (progress bars and where it is stored do not)."""
        d = self.model_dump(exclude={"progress", "dir"})
        d["features"] = list(self.features)
        return d


class ImportedSettings(StrictConfig):
    path: str
    format: Literal["esci", "opensearch", "trec", "csv"]
    products_path: str | None = Field(None, description="ESCI products parquet (for product ids), optional")


class TierConfig(StrictConfig):
    backend: Literal["grader", "openai", "causal_lm"]
    openai: OpenAISettings | None = None
    causal_lm: CausalLMSettings | None = None
    grader: GraderConfig | None = None
    escalate_if_margin_below: float | None = Field(None, ge=0, le=1)
    escalate_if_entropy_above: float | None = Field(None, ge=0)


class CascadeSettings(StrictConfig):
    tiers: list[TierConfig] = Field(..., min_length=1)


class JudgeConfig(StrictConfig):
    """One judge of several: a backend with its own settings and, optionally, its own prompt version."""

    name: str | None = Field(None, description="label in the agreement report; default backend:model")
    backend: Literal["openai", "grader", "causal_lm"] = "openai"
    openai: OpenAISettings | None = None
    causal_lm: CausalLMSettings | None = None
    grader: GraderConfig | None = None
    prompt_version: str | None = Field(None, description="default: labels.prompt_version")

    @field_validator("prompt_version")
    @classmethod
    def _known_prompt(cls, v: str | None) -> str | None:
        if v is not None and v not in PROMPTS:
            raise ValueError(f"unknown prompt_version {v!r}; known: {sorted(PROMPTS)}")
        return v

    @model_validator(mode="after")
    def _needs(self) -> "JudgeConfig":
        if self.backend == "causal_lm" and self.causal_lm is None:
            raise ValueError("a causal_lm judge needs a causal_lm section. Fix: add causal_lm: {path: <a local "
                             "model dir>} to this judge.")
        return self


class BatchSettings(StrictConfig):
    """The OpenAI Batch API (`ltr label --batch`): half the price, results within the completion window."""

    enabled: bool = Field(False, description="grade through the Batch API (the CLI's --batch sets it)")
    poll_s: float = Field(30.0, gt=0, description="seconds between status polls")
    max_wait_s: float | None = Field(None, gt=0, description="stop polling after this long; a re-run "
                                     "resumes the same batch (its id is kept in the cache file)")
    completion_window: Literal["24h"] = "24h"
    price_factor: float = Field(0.5, gt=0, le=1, description="batch price / live price (OpenAI: 0.5)")
    max_requests: int = Field(50_000, ge=1, description="requests per batch (OpenAI's limit: 50,000)")
    retry_failed: Literal["live", "report"] = Field(
        "live", description="failed lines: grade again live (429/5xx/expired only), or only report them")


class LabelConfig(StrictConfig):
    backend: BackendName = "grader"
    prompt_version: str = DEFAULT_PROMPT_VERSION
    cache_path: str | None = Field(None, description="SQLite cache; default: <out dir>/label_cache.sqlite")
    max_dollars: float | None = Field(None, ge=0)
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict, description="USD per 1M tokens in/out")
    grader: GraderConfig = Field(default_factory=GraderConfig)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    causal_lm: CausalLMSettings | None = None
    imported: ImportedSettings | None = None
    cascade: CascadeSettings | None = None
    judges: list[JudgeConfig] = Field(default_factory=list, description="backend 'judges': who grades")
    combine: Literal["mean", "majority"] = Field("mean", description="judges: mean distribution or majority vote")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    calibrate: bool = Field(True, description="report agreement with the dataset's human judgments")
    seed_share: float | None = Field(None, gt=0, le=1, description="the pilot: the share of the run's training "
                                     "queries whose human grades the grader learns from; it grades the rest as "
                                     "an LLM would, and no other human grade of a training query is used. None: "
                                     "all judged queries but a 20% calibration holdout")
    seed_queries: int | None = Field(None, ge=2, description="the pilot as a number of training queries "
                                     "(instead of seed_share)")

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
        if self.backend == "judges" and len(self.judges) < 2:
            raise ValueError("backend 'judges' needs a `judges` list of at least two judges (each with a backend "
                             "and its settings). Fix: add labels.judges entries, or use a single backend.")
        if self.seed_share is not None and self.seed_queries is not None:
            raise ValueError("labels.seed_share and labels.seed_queries both set. Fix: give the pilot as a share "
                             "or as a number of queries, not both.")
        if self.batch.enabled and self.backend != "openai":
            raise ValueError(f"batch grading needs backend 'openai' (got {self.backend!r}). Fix: set "
                             "labels.backend: openai, or drop --batch / labels.batch.enabled.")
        return self
