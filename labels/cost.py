"""Token and dollar accounting with a hard budget that is never exceeded.

Before a request is sent, its worst-case cost (estimated prompt tokens + max output tokens) is
*reserved*; the request only goes out if spent + reserved stays within `max_dollars`. When it returns,
the reservation is replaced by the real cost from the response's `usage`. So the run stops cleanly
before the budget is crossed, even with many requests in flight.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

# USD per 1M tokens (input, output). Override or extend via LabelConfig.prices.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
}

#: the Batch API bills input and output at half the live price (results within 24 h)
BATCH_PRICE_FACTOR = 0.5


def _lookup(model: str, table: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    if model in table:
        return tuple(table[model])  # type: ignore[return-value]
    for name in sorted(table, key=len, reverse=True):  # dated variants: gpt-4o-mini-2024-07-18
        if model.startswith(name + "-"):
            return tuple(table[name])  # type: ignore[return-value]
    return None


def price_for(model: str, prices: dict[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """Price per 1M tokens; an unknown model is free (local servers) - configure `prices` to bill it."""
    live = {k: v for k, v in (prices or {}).items() if not k.startswith("batch:")}
    return _lookup(model, {**PRICES, **live}) or (0.0, 0.0)


def batch_price_for(model: str, prices: dict[str, tuple[float, float]] | None = None,
                    factor: float = BATCH_PRICE_FACTOR) -> tuple[float, float]:
    """Batch API price per 1M tokens: an explicit `batch:<model>` entry in `prices` wins (a provider whose
    discount differs), else the live price times `factor`."""
    explicit = _lookup(model, {k.removeprefix("batch:"): v for k, v in (prices or {}).items()
                               if k.startswith("batch:")})
    if explicit is not None:
        return explicit
    pin, pout = price_for(model, prices)
    return pin * factor, pout * factor


def estimate_tokens(text: str) -> int:
    """Rough upper-leaning token estimate (~3.5 chars per token) for budget reservations."""
    return int(len(text) / 3.5) + 8


@dataclass
class CostMeter:
    max_dollars: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, dollars: float) -> bool:
        """Reserve a worst-case cost; False (nothing reserved) if it could cross the budget."""
        with self._lock:
            if self.max_dollars is not None and self.spent + self.reserved + dollars > self.max_dollars + 1e-12:
                return False
            self.reserved += dollars
            return True

    def settle(self, reserved: float, dollars: float, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += dollars
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self.requests += 1

    def release(self, reserved: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)

    def summary(self) -> dict:
        return {"dollars": round(self.spent, 6), "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "requests": self.requests, "max_dollars": self.max_dollars}

    def postfix(self) -> str:
        return f"${self.spent:.4f} tok {self.tokens_in}/{self.tokens_out}"
