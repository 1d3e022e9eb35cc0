"""The service's settings, validated once (`ltr serve` flags and `create_app(serving=...)` both land here)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ltr.data.config import StrictConfig


class ServedLogConfig(StrictConfig):
    """Served-feature log: parquet parts written by a background thread, never on the request path."""

    #: records (requests) per part file at most: the size bound of one file
    part_records: int = Field(2_000, ge=1)
    #: a part is closed after this many seconds even when small: the time bound
    part_seconds: float = Field(300.0, gt=0)
    #: requests waiting to be written; beyond it records are dropped and counted, never a blocked request
    queue_records: int = Field(20_000, ge=1)


class ServingConfig(StrictConfig):
    """Bounds, phases and reload of the ranking service (defaults measured on 2 cores, see docs/serving.md)."""

    #: candidates per request at most (422 beyond)
    max_candidates: int = Field(1000, ge=1)
    #: request body bytes at most, checked before the body is parsed (413 beyond)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    #: characters per product id / request id at most (422 beyond)
    max_id_chars: int = Field(200, ge=1)
    #: requests in progress at once; beyond it 503 with Retry-After, instead of an unbounded queue
    max_inflight: int = Field(32, ge=1)
    #: second phase: the cross-encoder scores the first phase's top k candidates (10: the NDCG@10 cut-off;
    #: the bench's curve over k is in docs/serving.md) ...
    rerank_k: int = Field(10, ge=0)
    #: ... within this many milliseconds of the request's arrival; pairs not scored by then stay missing
    #: (130: a new query's first phase ~30 ms + one pass of 10 int8 pairs ~90 ms on 2 AVX2 cores, with room
    #: for the final phase and HTTP inside a 150 ms p99)
    ce_deadline_ms: float = Field(130.0, gt=0)
    #: how the cross-encoder runs: "auto" = ONNX int8 when the model's artifact carries its int8 export
    #: (built at registration, ltr.tracking.ServingParts.cross_encoder_int8), else torch fp32; an explicit
    #: "onnx-int8" / "onnx" exports at start when the artifact lacks it (~26 s on 2 cores)
    ce_backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = "auto"
    #: how a new query is embedded for `bienc_cos`: "auto" = ONNX Runtime when the bi-encoder's export is under
    #: the embedding cache (`ltr features build` makes it; ~6 ms a query against torch's 13-17 ms on one AVX2
    #: core, features/query_encoder.py), else torch; "onnx" refuses to start without it; "torch" as offline
    query_backend: Literal["auto", "torch", "onnx"] = "auto"
    #: requests computing their first phase at once, let in in arrival order (ltr/serving/gate.py); 0: no gate
    cpu_slots: int = Field(1, ge=0)
    #: assembled feature rows kept per (query, product) while the online store's file is unchanged (0: none)
    row_cache_rows: int = Field(50_000, ge=0)
    #: pairs per cross-encoder forward pass, drawn from all waiting requests
    ce_batch_size: int = Field(16, ge=1)
    #: requests waiting for the cross-encoder at once; beyond it a request is served from the first phase
    ce_max_jobs: int = Field(32, ge=1)
    #: seconds between registry checks of the model alias (0: never reload)
    reload_poll_s: float = Field(30.0, ge=0)
    #: with a challenger (`ltr serve --challenger`): the share of requests answered by team-draft interleaving
    #: of champion and challenger, chosen by request id (ltr/interleaving.py); the rest get the champion alone
    interleave_share: float = Field(0.5, ge=0, le=1)
    log: ServedLogConfig = Field(default_factory=ServedLogConfig)


__all__ = ["ServedLogConfig", "ServingConfig"]
