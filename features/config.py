"""Configuration of the feature stage (pydantic v2, extra="forbid" so a typo fails loudly)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ltr.data.config import StrictConfig

FAMILIES = ("lexical", "product", "engagement", "content", "labels")
Family = Literal["lexical", "product", "engagement", "content", "labels"]


class RedisConfig(StrictConfig):
    """Connection to a Redis online store (Debian's redis-server is enough)."""

    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password: str | None = None

    @property
    def connection_string(self) -> str:
        """Feast's format: ``host:port,db=N[,password=...]``."""
        s = f"{self.host}:{self.port},db={self.db}"
        return s + (f",password={self.password}" if self.password else "")


class FeaturesConfig(StrictConfig):
    """What the feature stage computes and where Feast keeps it.

    `windows_days` drive the engagement windows; `smoothing` is the pseudo-count m of the smoothed
    rates (x + m*mu) / (n + m); `static_timestamp` is the event time given to features that have no
    history (product text, lexical, content), early enough that every training example sees them.
    """

    families: list[Family] = Field(default_factory=lambda: list(FAMILIES))
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis: RedisConfig = Field(default_factory=RedisConfig)
    project: str = Field("ltr", pattern=r"^[a-z][a-z0-9_]*$")
    windows_days: list[int] = Field(default_factory=lambda: [7, 28])
    smoothing: float = Field(10.0, gt=0)
    position_prior_strength: float = Field(10.0, gt=0)
    static_timestamp: str = "2000-01-01T00:00:00Z"
    labeler_priority: list[str] = Field(default_factory=lambda: ["human", "llm", "grader", "engagement"])
    bulk_batch_rows: int = Field(50_000, ge=100)
    #: memory map of the online SQLite file for serving reads; off by default: a mapped file truncated under a
    #: running service kills it with SIGBUS (features/online_reader.py); reads are fast without it
    sqlite_read_mmap_mb: int = Field(0, ge=0)
    #: the bi-encoder behind `bienc_cos`: a fine-tuned two-tower dir (features/twotower) or None for the
    #: zero-shot all-MiniLM-L6-v2; `features.twotower.feature_bi_encoder` turns it into the encoder
    bienc_path: str | None = None

    @field_validator("windows_days")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v) or len(set(v)) != len(v):
            raise ValueError("windows_days must be distinct positive day counts, e.g. [7, 28]")
        return sorted(v)

    @field_validator("families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"families has duplicates: {v}. Fix: list each of {FAMILIES} at most once")
        return v
