"""OpenAI-compatible chat-completions backend (OpenAI, vLLM, Ollama, llama.cpp server, ...).

The grade distribution comes from the top logprobs of the grade token (score = expected grade / 3);
when a server returns no logprobs the reply text is parsed and the distribution is one-hot.
Async with a concurrency limit, an optional requests-per-second limit, retries with exponential
backoff (and Retry-After) on 429 / 5xx / timeouts / connection errors / malformed bodies, and a
per-request timeout. Each result is handed to `on_result` as soon as it returns.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import threading
import time
from typing import Any, Sequence

import httpx

from ..config import OpenAISettings
from ..cost import CostMeter, estimate_tokens, price_for
from ..prompts import get_prompt
from .base import Backend, LabelerError, LabelResult, OnResult, Pair

_GRADES = ("0", "1", "2", "3")
_NUMBER = re.compile(r"(?<![\d.])(\d+)(?![\d.])")


class _Transient(Exception):
    """Worth retrying: 429, 5xx, timeout, connection error, malformed body."""

    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


def _digit_token(tok: str) -> str | None:
    t = tok.strip().strip("*#:.\"'`")
    return t if t.isdigit() else None


def parse_grade(body: dict[str, Any]) -> tuple[tuple[float, float, float, float], int, int]:
    """(p0..p3, prompt tokens, completion tokens) from a chat-completions response body.

    Raises _Transient for a structurally broken body, LabelerError for a well-formed reply that holds no
    valid 0-3 grade (a deterministic answer: retrying would pay again for the same reply)."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Transient(f"response has no choices[0].message ({e!r})") from None
    usage = body.get("usage") or {}
    tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    content = ((choice.get("logprobs") or {}).get("content")) or []
    for item in content:
        d = _digit_token(str(item.get("token", "")))
        if d is None:
            continue
        if d not in _GRADES:
            raise LabelerError(f"grade token {d!r} is outside 0-3 (reply {text!r}). Fix: check the model "
                               "follows the prompt (prompt_version) or use a stronger model.")
        mass = [0.0, 0.0, 0.0, 0.0]
        tops = item.get("top_logprobs") or [{"token": item["token"], "logprob": item.get("logprob", 0.0)}]
        seen_chosen = False
        for t in tops:
            dd = _digit_token(str(t.get("token", "")))
            if dd in _GRADES and t.get("logprob") is not None:
                mass[int(dd)] += math.exp(float(t["logprob"]))
                seen_chosen |= dd == d
        if not seen_chosen:
            mass[int(d)] += math.exp(float(item.get("logprob", 0.0)))
        tot = sum(mass)
        return tuple(m / tot for m in mass), tin, tout  # type: ignore[return-value]
    # no logprobs: parse the text, one-hot
    m = _NUMBER.search(text.split("score:")[-1] if "score:" in text else text)
    if m is None:
        raise LabelerError(f"reply holds no grade (reply {text!r}, no logprobs). Fix: use a model that follows "
                           "the prompt, or raise max_tokens.")
    g = m.group(1)
    if g not in _GRADES:
        raise LabelerError(f"grade {g!r} is outside 0-3 (reply {text!r}). Fix: check the model follows the prompt.")
    probs = [0.0] * 4
    probs[int(g)] = 1.0
    return tuple(probs), tin, tout  # type: ignore[return-value]


class _RateLimiter:
    def __init__(self, rps: float | None):
        self.interval = 1.0 / rps if rps else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, settings: OpenAISettings | None = None, prompt_version: str | None = None,
                 meter: CostMeter | None = None, prices: dict[str, tuple[float, float]] | None = None):
        from ..prompts import DEFAULT_PROMPT_VERSION
        self.s = settings or OpenAISettings()
        self.prompt = get_prompt(prompt_version or DEFAULT_PROMPT_VERSION)
        self.prompt_version = self.prompt.version
        self.model = self.s.model
        self.meter = meter or CostMeter()
        self.price_in, self.price_out = price_for(self.model, prices)
        base = self.s.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.url = base.rstrip("/") + "/chat/completions"
        self.api_key = self.s.api_key or os.environ.get(self.s.api_key_env, "")
        self.stats = {"requests": 0, "retries": 0}

    def _payload(self, pair: Pair) -> dict[str, Any]:
        p: dict[str, Any] = {"model": self.model, "messages": self.prompt.messages(pair.query, pair.product),
                             "max_tokens": self.s.max_tokens, "temperature": self.s.temperature}
        if self.s.top_logprobs:
            p.update(logprobs=True, top_logprobs=self.s.top_logprobs)
        p.update(self.s.extra_body)  # e.g. a grammar that forces a small model to answer with one digit
        return p

    def _dollars(self, tin: int, tout: int) -> float:
        return (tin * self.price_in + tout * self.price_out) / 1e6

    async def _one(self, client: httpx.AsyncClient, limiter: _RateLimiter, pair: Pair) -> LabelResult:
        payload = self._payload(pair)
        last = ""
        for attempt in range(self.s.max_retries + 1):
            await limiter.wait()
            self.stats["requests"] += 1
            retry_after = None
            try:
                resp = await client.post(self.url, json=payload)
                if resp.status_code == 429 or resp.status_code >= 500:
                    ra = resp.headers.get("retry-after")
                    raise _Transient(f"HTTP {resp.status_code}: {resp.text[:200]}",
                                     float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)
                if resp.status_code >= 400:
                    raise LabelerError(f"HTTP {resp.status_code} from {self.url} for query {pair.query!r} / product "
                                       f"{pair.product_id}: {resp.text[:300]}. Fix: check base_url, model and "
                                       f"the API key (env {self.s.api_key_env}).")
                try:
                    body = resp.json()
                except (json.JSONDecodeError, ValueError) as e:
                    raise _Transient(f"malformed JSON body ({e}): {resp.text[:120]!r}") from None
                if not isinstance(body, dict):
                    raise _Transient(f"malformed body: expected a JSON object, got {type(body).__name__}")
                probs, tin, tout = parse_grade(body)
                if not tin:
                    tin = estimate_tokens(json.dumps(payload["messages"]))
                if not tout:
                    tout = 1
                return LabelResult(pair.query_id, pair.product_id, probs, self.name, self.model,
                                   self.prompt_version, tin, tout, self._dollars(tin, tout))
            except httpx.TimeoutException as e:
                last = f"timeout after {self.s.timeout_s}s ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__}: {e})"
            except _Transient as e:
                last, retry_after = str(e), e.retry_after
            if attempt < self.s.max_retries:
                self.stats["retries"] += 1
                delay = min(self.s.backoff_max_s, self.s.backoff_base_s * 2 ** attempt) * (0.5 + random.random() / 2)
                if retry_after is not None:
                    delay = min(self.s.backoff_max_s, max(delay, retry_after))
                await asyncio.sleep(delay)
        raise LabelerError(f"gave up on query {pair.query!r} / product {pair.product_id} after "
                           f"{self.s.max_retries + 1} attempts: {last}. Fix: check the server at {self.url}, "
                           "raise timeout_s / max_retries, or lower concurrency.")

    async def agrade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        self.stopped_reason = None
        sem = asyncio.Semaphore(self.s.concurrency)
        limiter = _RateLimiter(self.s.requests_per_second)
        results: dict[int, LabelResult] = {}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.s.concurrency, max_keepalive_connections=self.s.concurrency)
        failure: list[BaseException] = []
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.s.timeout_s), headers=headers, limits=limits) as client:
            async def work(i: int, pair: Pair) -> None:
                async with sem:
                    if failure or self.stopped_reason:
                        return
                    est = self._dollars(estimate_tokens(json.dumps(self.prompt.messages(pair.query, pair.product))),
                                        self.s.max_tokens) * 1.5
                    if not self.meter.reserve(est):
                        self.stopped_reason = "budget"
                        return
                    try:
                        r = await self._one(client, limiter, pair)
                    except BaseException as e:
                        self.meter.release(est)
                        failure.append(e)
                        raise
                    self.meter.settle(est, r.cost, r.tokens_in, r.tokens_out)
                    results[i] = r
                    if on_result:
                        on_result(pair, r)

            tasks = [asyncio.create_task(work(i, p)) for i, p in enumerate(pairs)]
            try:
                await asyncio.gather(*tasks)
            except BaseException as exc:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if failure:
                    # Re-raise the failing task's own exception as is (usually `exc` itself); chaining it
                    # `from exc` / `from None` would overwrite its own __cause__.
                    raise failure[0]  # noqa: B904
                raise LabelerError("labelling was cancelled") from exc
        return [results[i] for i in sorted(results)]

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agrade(pairs, on_result))
        box: dict[str, Any] = {}

        def runner() -> None:  # called from inside an event loop (e.g. a notebook): use a fresh one
            try:
                box["r"] = asyncio.run(self.agrade(pairs, on_result))
            except BaseException as e:  # pragma: no cover - passed through
                box["e"] = e
        t = threading.Thread(target=runner)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box["r"]
