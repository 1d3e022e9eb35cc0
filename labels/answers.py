"""From a chat-completions reply to a grade distribution, and the structured-output request that asks for it.

Three sources, best first: the top logprobs of the grade token (a real distribution); the grade in a
structured JSON answer {intent, match, grade} or in plain text (one answer: one-hot); n sampled answers
(their mean). Which one a label got is recorded beside it (`source`), so a one-hot grade is never
mistaken for a confident distribution. Shared by the live backend and the Batch API, whose output lines
carry the same response bodies.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .backends.base import LabelerError

_GRADES = ("0", "1", "2", "3")
_NUMBER = re.compile(r"(?<![\d.])(\d+)(?![\d.])")
_GRADE_KEY = re.compile(r'"grade"\s*:\s*"?$')

#: the structured answer: UMBRELA's steps (intent, then match) before the grade, so the model reasons first
GRADE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"intent": {"type": "string"}, "match": {"type": "string"},
                   "grade": {"type": "integer", "enum": [0, 1, 2, 3]}},
    "required": ["intent", "match", "grade"],
    "additionalProperties": False,
}
JSON_INSTRUCTION = ('Answer with a JSON object only: {"intent": "<the shopper\'s intent, one sentence>", '
                    '"match": "<how the product matches it, one sentence>", "grade": <the final score, 0-3>}.')


class MalformedReply(Exception):
    """A structurally broken body (truncated JSON, no choices): worth retrying, unlike a wrong answer."""


def structured_fields(via: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request fields, extra_body fields) that hold the server to GRADE_SCHEMA."""
    if via == "response_format":  # OpenAI, Azure, Ollama, vLLM, llama.cpp server
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "relevance_grade", "strict": True, "schema": GRADE_SCHEMA}}}, {}
    if via == "guided_json":  # vLLM's own field
        return {}, {"guided_json": GRADE_SCHEMA}
    if via == "json_schema":  # llama.cpp server's own field
        return {}, {"json_schema": GRADE_SCHEMA}
    if via == "json_object":  # llama-cpp-python's server (its response_format knows no json_schema type), llama-server
        return {"response_format": {"type": "json_object", "schema": GRADE_SCHEMA}}, {}
    raise ValueError(f"unknown structured_via {via!r}. Fix: use response_format, guided_json, json_schema or "
                     "json_object.")


def structured_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt with its closing 'answer with a digit' paragraph replaced by the JSON instruction."""
    out = [dict(m) for m in messages]
    head, _, last = out[-1]["content"].rpartition("\n\n")
    body = head if head and last.lstrip().lower().startswith("answer with") else out[-1]["content"]
    out[-1]["content"] = body + "\n\n" + JSON_INSTRUCTION
    return out


def _digit_token(tok: str) -> str | None:
    t = tok.strip().strip("*#:.,{}\"'`")
    return t if t.isdigit() else None


def _bad_grade(g: str, text: str) -> LabelerError:
    return LabelerError(f"grade {g!r} is outside 0-3 (reply {text[:200]!r}). Fix: check the model follows the "
                        "prompt (prompt_version) or use a stronger model.")


def _from_top_logprobs(item: Mapping[str, Any], d: str) -> tuple[float, ...]:
    """Normalised mass of the grade digits among the chosen token's top logprobs."""
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
    return tuple(m / tot for m in mass)


def _grade_token(content: list, structured: bool) -> tuple[Mapping[str, Any], str] | None:
    """The logprob entry of the grade token: the first digit token, or in JSON the one right after "grade":."""
    text = ""
    for item in content:
        tok = str(item.get("token", ""))
        d = _digit_token(tok)
        if d is not None and (not structured or _GRADE_KEY.search(text)):
            return item, d
        text += tok
    return None


def _text_grade(text: str, structured: bool, truncated: bool = False) -> tuple[str, str]:
    """(grade digit, source) from the reply text: the JSON answer's grade, else the last 'score:' number
    (a JSON answer cut off by the output budget is an error: a number in its intent is not the grade)."""
    if structured:
        try:
            ans = json.loads(text)
            g = ans["grade"] if isinstance(ans, dict) else None
        except ValueError:
            g = None
        if (isinstance(g, int) and not isinstance(g, bool)) or (isinstance(g, str) and g.strip().isdigit()):
            return str(g).strip(), "one-hot"
        if truncated:
            raise LabelerError(f"the JSON answer was cut off by the output budget (finish_reason 'length'; reply "
                               f"{text[:200]!r}). Fix: raise openai.max_tokens.")
    m = _NUMBER.search(text.split("score:")[-1] if "score:" in text else text)
    if m is None:
        raise LabelerError(f"reply holds no grade (reply {text[:200]!r}). Fix: use a model that follows the prompt, "
                           "raise max_tokens (a reasoning model spends them on thinking first), or set "
                           "output: json_schema where the server supports structured output.")
    return m.group(1), ("text-one-hot" if structured else "one-hot")


def choice_distribution(choice: Mapping[str, Any], structured: bool) -> tuple[tuple[float, ...], str]:
    """(p0..p3, source) of one choice; source is `logprobs`, `one-hot` or, for a JSON request answered
    in plain text, `text-one-hot`."""
    try:
        text = choice["message"].get("content") or ""
    except (KeyError, TypeError, AttributeError) as e:
        raise MalformedReply(f"response has no choices[].message ({e!r})") from None
    found = _grade_token(((choice.get("logprobs") or {}).get("content")) or [], structured)
    if found is not None:
        item, d = found
        if d not in _GRADES:
            raise _bad_grade(d, text)
        return _from_top_logprobs(item, d), "logprobs"
    if not text and choice.get("finish_reason") == "length":
        raise LabelerError("the reply is empty: the output budget ran out (finish_reason 'length'; a reasoning "
                           "model spends it on thinking). Fix: raise openai.max_tokens.")
    g, source = _text_grade(text, structured, choice.get("finish_reason") == "length")
    if g not in _GRADES:
        raise _bad_grade(g, text)
    probs = [0.0] * 4
    probs[int(g)] = 1.0
    return tuple(probs), source


@dataclass(frozen=True)
class Parsed:
    probs: tuple[float, float, float, float]
    source: str  # how the distribution was obtained: logprobs | one-hot | text-one-hot | mixed
    tokens_in: int
    tokens_out: int


def parse_completion(body: Mapping[str, Any], structured: bool = False) -> Parsed:
    """The grade distribution of a chat completion: the mean over its choices (n samples -> empirical).

    Raises MalformedReply for a structurally broken body, LabelerError for a well-formed reply that holds
    no valid 0-3 grade (a deterministic answer: retrying would pay again for the same reply)."""
    choices = body.get("choices") if isinstance(body, Mapping) else None
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("response has no choices[0].message")
    dists = [choice_distribution(c, structured) for c in choices]
    probs = tuple(sum(p[k] for p, _ in dists) / len(dists) for k in range(4))
    sources = {s for _, s in dists}
    usage = body.get("usage") or {}
    return Parsed(probs, sources.pop() if len(sources) == 1 else "mixed",  # type: ignore[arg-type]
                  int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
