"""OpenAI-compatible chat-completions backend on the official `openai` client (OpenAI, Azure OpenAI, vLLM,
Ollama, llama.cpp server, ...).

The client builds the requests (auth, Azure deployment URLs, typed parameters); its own retries are off
(`max_retries=0`) so that every attempt passes through one loop here, where the budget, the request
counts and the rate limit are kept. That loop retries 429 / 408 / 5xx / timeouts / connection errors /
malformed bodies with exponential backoff, waits as long as the server asks (`Retry-After` in seconds or
as an HTTP-date, `retry-after-ms`) up to `retry_after_max_s`, and fails with a LabelerError naming the
pair and the fix otherwise. The request shape follows the model's profile (labels/model_profiles.py) and
the output mode (logprobs, JSON schema, text, n samples); the mode is part of the backend's name, hence
of the cache key, and each result says where its distribution came from (`output_mode`).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import threading
import time
from datetime import timezone
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from ..answers import MalformedReply, parse_completion, structured_fields, structured_messages
from ..config import OpenAISettings
from ..cost import BATCH_PRICE_FACTOR, CostMeter, batch_price_for, estimate_tokens, price_for
from ..model_profiles import default_max_tokens
from ..prompts import get_prompt
from .base import Backend, LabelerError, LabelResult, OnResult, Pair

T = TypeVar("T")
_RETRYABLE_STATUS = (408, 429)


def parse_grade(body: dict[str, Any]) -> tuple[tuple[float, float, float, float], int, int]:
    """(p0..p3, prompt tokens, completion tokens) of a plain (digit) answer; see labels/answers.py."""
    try:
        p = parse_completion(body)
    except MalformedReply as e:
        raise LabelerError(str(e)) from None
    return p.probs, p.tokens_in, p.tokens_out


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `Retry-After` as seconds or an HTTP-date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = (headers.get("retry-after") or "").strip()
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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


class _Retry(Exception):
    """One failed attempt worth another: the reason, and how long the server asked us to wait."""

    def __init__(self, msg: str, wait: float | None = None):
        super().__init__(msg)
        self.wait = wait


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, settings: OpenAISettings | None = None, prompt_version: str | None = None,
                 meter: CostMeter | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 batch_price_factor: float = BATCH_PRICE_FACTOR):
        from ..prompts import DEFAULT_PROMPT_VERSION
        self.s = settings or OpenAISettings()
        self.prompt = get_prompt(prompt_version or DEFAULT_PROMPT_VERSION)
        self.prompt_version = self.prompt.version
        self.model = self.s.model
        self.profile = self.s.model_profile()
        self.mode = self.s.output_mode()
        self.structured = self.mode.startswith("json_schema")
        self.max_tokens = self.s.max_tokens or default_max_tokens(self.profile, self.mode)
        effort = f":effort={self.profile.reasoning_effort}" if self.profile.reasoning_effort else ""
        # the plain chat + logprobs mode keeps the historical name, so caches written before modes existed stay valid
        self.name = "openai" if self.mode == "logprobs" and not effort else f"openai:{self.mode}{effort}"
        self.meter = meter or CostMeter()
        self.price_in, self.price_out = price_for(self.model, prices)
        self.batch_price_in, self.batch_price_out = batch_price_for(self.model, prices, batch_price_factor)
        self.base_url = self.s.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key = self.s.api_key or os.environ.get(self.s.api_key_env, "")
        self.stats = {"requests": 0, "retries": 0}

    # --- the request ---------------------------------------------------------------------------------

    def make_client(self):
        """An AsyncOpenAI (or AsyncAzureOpenAI) client with its own retries off: ours keep the accounting."""
        import openai
        common = dict(api_key=self.api_key or "none", max_retries=0, timeout=self.s.timeout_s)
        if self.s.azure_endpoint:
            return openai.AsyncAzureOpenAI(azure_endpoint=self.s.azure_endpoint, api_version=self.s.api_version,
                                           **common)
        if self.s.api_version:  # Azure through a full deployment base_url
            return openai.AsyncAzureOpenAI(base_url=self.base_url, api_version=self.s.api_version, **common)
        return openai.AsyncOpenAI(base_url=self.base_url, **common)

    def messages(self, pair: Pair) -> list[dict[str, str]]:
        msgs = self.prompt.messages(pair.query, pair.product)
        return structured_messages(msgs) if self.structured else msgs

    def request_parts(self, pair: Pair) -> tuple[dict[str, Any], dict[str, Any]]:
        """(typed chat.completions.create arguments, extra_body): the profile's shape for this pair."""
        p = self.profile
        fields: dict[str, Any] = {"model": self.model, "messages": self.messages(pair), p.token_param: self.max_tokens}
        if p.temperature:
            fields["temperature"] = self.s.temperature
        if p.reasoning_effort:
            fields["reasoning_effort"] = p.reasoning_effort
        if p.logprobs and self.mode != "text" and self.s.top_logprobs:
            fields.update(logprobs=True, top_logprobs=self.s.top_logprobs)
        if self.s.samples > 1:
            fields["n"] = self.s.samples
        extra: dict[str, Any] = {}
        if self.structured:
            f, extra = structured_fields(self.s.structured_via)
            fields.update(f)
        return fields, {**extra, **self.s.extra_body}  # e.g. a grammar that holds a small model to one digit

    def request_body(self, pair: Pair) -> dict[str, Any]:
        """The JSON body as sent: what a Batch API input line carries."""
        fields, extra = self.request_parts(pair)
        return {**fields, **extra}

    def result_from_body(self, query_id: str, product_id: str, body: Mapping[str, Any], prompt_text: str,
                         batch: bool = False) -> LabelResult:
        """The label in a response body, priced live or at batch rates. Raises MalformedReply / LabelerError."""
        parsed = parse_completion(body, self.structured)
        tin = parsed.tokens_in or estimate_tokens(prompt_text)
        tout = parsed.tokens_out or 1
        pin, pout = (self.batch_price_in, self.batch_price_out) if batch else (self.price_in, self.price_out)
        return LabelResult(query_id, product_id, parsed.probs, self.name, self.model, self.prompt_version,
                              tin, tout, (tin * pin + tout * pout) / 1e6, output_mode=f"{self.mode}/{parsed.source}")

    def estimate_dollars(self, pair: Pair, batch: bool = False) -> float:
        """Worst-case cost of one request, reserved against the budget before it is sent."""
        tin = estimate_tokens(json.dumps(self.messages(pair)))
        tout = self.max_tokens * self.s.samples
        pin, pout = (self.batch_price_in, self.batch_price_out) if batch else (self.price_in, self.price_out)
        return (tin * pin + tout * pout) / 1e6 * 1.5

    # --- one call, retried ---------------------------------------------------------------------------

    def _delay(self, attempt: int, wait: float | None) -> float:
        backoff = min(self.s.backoff_max_s, self.s.backoff_base_s * 2 ** attempt) * (0.5 + random.random() / 2)
        return backoff if wait is None else max(backoff, wait)

    def _classify(self, e: BaseException, what: str) -> _Retry:
        """A retryable failure as _Retry; anything else as the LabelerError that ends the run."""
        import openai
        if isinstance(e, openai.APITimeoutError):
            return _Retry(f"timeout after {self.s.timeout_s}s")
        if isinstance(e, openai.APIConnectionError):
            return _Retry(f"connection error ({e.__cause__ or e})")
        if isinstance(e, MalformedReply):
            return _Retry(str(e))
        if not isinstance(e, openai.APIStatusError):
            raise e
        code, text = e.status_code, e.response.text[:300]
        if code not in _RETRYABLE_STATUS and code < 500:
            raise LabelerError(
                f"HTTP {code} from {self.base_url} for {what}: {text}. Fix: check base_url, model and the API key "
                f"(env {self.s.api_key_env}); a 400 naming max_tokens, temperature or logprobs means the model "
                "needs openai.profile: reasoning.") from None
        wait = retry_after_s(e.response.headers)
        if wait is not None and wait > self.s.retry_after_max_s:
            raise LabelerError(
                f"HTTP {code} from {self.base_url} for {what}: the server asks to wait {wait:.0f}s before a retry, "
                f"more than retry_after_max_s={self.s.retry_after_max_s:g}. Fix: raise openai.retry_after_max_s, or "
                "re-run later (graded pairs are kept in the cache).") from None
        return _Retry(f"HTTP {code}: {text[:200]}", wait)

    async def call(self, what: str, attempt: Callable[[], Awaitable[T]], limiter: _RateLimiter | None = None) -> T:
        """`attempt()` until it succeeds, retrying what is worth retrying; else one clear LabelerError."""
        last = ""
        for i in range(self.s.max_retries + 1):
            if limiter is not None:
                await limiter.wait()
            self.stats["requests"] += 1
            try:
                return await attempt()
            except Exception as e:  # noqa: BLE001 - classified: retried or re-raised as a LabelerError
                r = self._classify(e, what)
            last = str(r)
            if i < self.s.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(self._delay(i, r.wait))
        raise LabelerError(f"gave up on {what} after {self.s.max_retries + 1} attempts: {last}. Fix: check the "
                           f"server at {self.base_url}, raise timeout_s / max_retries, or lower concurrency.")

    async def _one(self, client, limiter: _RateLimiter, pair: Pair) -> LabelResult:
        fields, extra = self.request_parts(pair)
        prompt_text = json.dumps(fields["messages"])

        async def attempt() -> LabelResult:
            raw = await client.chat.completions.with_raw_response.create(**fields, extra_body=extra or None)
            try:
                body = json.loads(raw.text)
            except ValueError as e:
                raise MalformedReply(f"malformed JSON body ({e}): {raw.text[:120]!r}") from None
            if not isinstance(body, dict):
                raise MalformedReply(f"malformed body: expected a JSON object, got {type(body).__name__}")
            return self.result_from_body(pair.query_id, pair.product_id, body, prompt_text)

        return await self.call(f"query {pair.query!r} / product {pair.product_id}", attempt, limiter)

    # --- many pairs ----------------------------------------------------------------------------------

    async def agrade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        self.stopped_reason = None
        sem = asyncio.Semaphore(self.s.concurrency)
        limiter = _RateLimiter(self.s.requests_per_second)
        results: dict[int, LabelResult] = {}
        failure: list[BaseException] = []
        async with self.make_client() as client:
            async def work(i: int, pair: Pair) -> None:
                async with sem:
                    if failure or self.stopped_reason:
                        return
                    est = self.estimate_dollars(pair)
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

            await _gather_or_cancel([work(i, p) for i, p in enumerate(pairs)], failure)
        return [results[i] for i in sorted(results)]

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        return run_sync(lambda: self.agrade(pairs, on_result))


async def _gather_or_cancel(coros: list, failure: list[BaseException]) -> None:
    """Run all; on the first failure cancel the rest and raise that failure as is."""
    tasks = [asyncio.create_task(c) for c in coros]
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


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when called inside a running loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    if not in_loop:  # outside the except block, so a failure is not shown chained to "no running event loop"
        return asyncio.run(make())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def runner() -> None:  # called from inside an event loop: use a fresh one on a thread
        try:
            box["r"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as e:  # pragma: no cover - passed through
            box["e"] = e
    t = threading.Thread(target=runner)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


__all__ = ["OpenAIBackend", "parse_grade", "retry_after_s", "run_sync"]
