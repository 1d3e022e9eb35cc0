"""Per-model request shapes, chosen from the model name, overridable in config.

One request shape cannot serve today's price table: reasoning models (gpt-5*, o1/o3/o4*) answer an
HTTP 400 to `max_tokens` and to any temperature but 1, and return no logprobs, while chat models
(gpt-4o*, gpt-4.1*, most local servers) take `max_tokens` and give the grade token's logprobs, which
is the best grade distribution there is. The profile says which shape a model gets; `output_mode`
then says how the grade distribution will be obtained, because that changes the answer and so belongs
in the cache key and in every label's provenance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

ProfileKind = Literal["chat", "reasoning"]
TokenParam = Literal["max_tokens", "max_completion_tokens"]

#: an optional provider prefix ("openai/gpt-5"), then the gpt-5 family or an o-series model (o1, o3-mini, o4-mini)
_REASONING = re.compile(r"^(?:[\w.-]+/)?(?:gpt-5|o\d)(?:[-.:]|$)", re.IGNORECASE)

#: output budgets when the config leaves max_tokens unset: a digit fits in 4 tokens; a JSON answer with
#: two short sentences in ~200; a reasoning model spends its hidden reasoning from the same budget.
_DEFAULT_MAX_TOKENS = {"digit": 4, "json": 256, "reasoning": 2048}


@dataclass(frozen=True)
class ModelProfile:
    kind: ProfileKind
    token_param: TokenParam
    temperature: bool  # whether the request may carry a temperature
    logprobs: bool  # whether the server returns token logprobs
    reasoning_effort: str | None = None


CHAT = ModelProfile("chat", "max_tokens", temperature=True, logprobs=True)
#: "low" effort: grading one pair needs little deliberation, and reasoning tokens are billed as output
REASONING = ModelProfile("reasoning", "max_completion_tokens", temperature=False, logprobs=False,
                         reasoning_effort="low")


def profile_for(model: str, kind: str = "auto", token_param: str | None = None, temperature: bool | None = None,
                logprobs: bool | None = None, reasoning_effort: str | None = None) -> ModelProfile:
    """The profile for `model`: from its name unless `kind` says otherwise, then each given field wins.

    An Azure deployment or a local alias can hide the model's family in its name, hence the overrides."""
    if kind == "auto":
        base = REASONING if _REASONING.match(model.strip()) else CHAT
    elif kind in ("chat", "reasoning"):
        base = CHAT if kind == "chat" else REASONING
    else:
        raise ValueError(f"unknown profile kind {kind!r}. Fix: use auto, chat or reasoning.")
    over = {k: v for k, v in (("token_param", token_param), ("temperature", temperature), ("logprobs", logprobs),
                              ("reasoning_effort", reasoning_effort)) if v is not None}
    if over.get("reasoning_effort") == "omit":  # the config's way to send no reasoning_effort at all
        over["reasoning_effort"] = None
    return replace(base, **over)


def output_mode(profile: ModelProfile, output: str, samples: int = 1) -> str:
    """How the grade distribution is obtained: `logprobs` (a digit and its top logprobs), `text` (a digit,
    one-hot), `json_schema` (the structured answer, one-hot), `json_schema+logprobs` (the structured
    answer's grade token logprobs), each with `+samples:n` when n answers are drawn and averaged."""
    if output == "auto":
        output = "logprobs" if profile.logprobs else "json_schema"
    if output == "logprobs" and not profile.logprobs:
        raise ValueError(f"output 'logprobs' needs a model that returns logprobs, and this {profile.kind} "
                         "profile returns none. Fix: set output: json_schema (or text), or profile.logprobs: "
                         "true if the server really returns them.")
    if output not in ("logprobs", "json_schema", "text"):
        raise ValueError(f"unknown output {output!r}. Fix: use auto, logprobs, json_schema or text.")
    mode = "json_schema+logprobs" if output == "json_schema" and profile.logprobs else output
    return mode + (f"+samples:{samples}" if samples > 1 else "")


def default_max_tokens(profile: ModelProfile, mode: str) -> int:
    if profile.kind == "reasoning":
        return _DEFAULT_MAX_TOKENS["reasoning"]
    return _DEFAULT_MAX_TOKENS["json" if mode.startswith("json_schema") else "digit"]
