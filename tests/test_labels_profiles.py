"""Model profiles, structured output, samples, Retry-After and Azure, against the real local OpenAI server.

The server (tests/openai_server.py) behaves like OpenAI's reasoning models for gpt-5* / o-series names (HTTP
400 on max_tokens, temperature != 1 and logprobs) and like a chat model with logprobs otherwise, so each
test here fails if the backend sends the wrong request shape or reads the answer the wrong way.
"""
from __future__ import annotations

import sqlite3
import time

import pytest
from openai_server import OpenAIServer, distribution_for, grade_for, sampled_grade

from labels.backends.base import LabelerError, Pair
from labels.backends.openai import OpenAIBackend, retry_after_s
from labels.cache import LabelCache, cache_key, grade_with_cache
from labels.config import LabelConfig, OpenAISettings
from labels.model_profiles import profile_for
from ltr.data.config import ConfigError, StrictConfig, load_config
from ltr.data.schemas import normalize_query, query_id


def _pairs(n: int = 3) -> list[Pair]:
    return [Pair(query_id(q), q, f"P{i}", {"title": f"Trail runner model {i}", "brand": "Acme", "color": "red"})
            for i, q in enumerate(f"red running shoes size {i % 3 + 8}" for i in range(n))]


def _settings(srv: OpenAIServer, **kw) -> OpenAISettings:
    base = dict(base_url=srv.base_url, model="local-test", api_key="sk-test", backoff_base_s=0.01,
                backoff_max_s=0.05, max_retries=2, timeout_s=2.0, concurrency=2)
    return OpenAISettings(**{**base, **kw})


def _prompt(be: OpenAIBackend, pair: Pair) -> str:
    return "\n".join(m["content"] for m in be.messages(pair))


def _one_hot(g: int) -> tuple[float, ...]:
    return tuple(1.0 if k == g else 0.0 for k in range(4))


@pytest.mark.parametrize("model, kind", [("gpt-5-mini", "reasoning"), ("gpt-5", "reasoning"), ("o3-mini", "reasoning"),
                                         ("o1", "reasoning"), ("o4-mini-2025-04-16", "reasoning"),
                                         ("openai/gpt-5-nano", "reasoning"), ("gpt-4o-mini", "chat"),
                                         ("gpt-4.1", "chat"), ("llama3.1:8b", "chat"), ("gpt-50x", "chat")])
def test_profile_from_model_name(model, kind):
    p = profile_for(model)
    assert p.kind == kind
    assert (p.token_param, p.temperature, p.logprobs) == (
        ("max_completion_tokens", False, False) if kind == "reasoning" else ("max_tokens", True, True))


def test_profile_overrides_and_output_mode_in_the_backend_name():
    s = OpenAISettings(model="my-azure-deployment", profile="reasoning")
    assert s.model_profile().kind == "reasoning" and s.output_mode() == "json_schema"
    s = OpenAISettings(model="gpt-5-mini", profile={"reasoning_effort": "omit", "token_param": "max_tokens"})
    assert s.model_profile().reasoning_effort is None and s.model_profile().token_param == "max_tokens"
    assert OpenAIBackend(OpenAISettings()).name == "openai"  # the historical name: old cache rows stay valid
    assert OpenAIBackend(OpenAISettings(model="gpt-5-mini")).name == "openai:json_schema:effort=low"
    assert OpenAIBackend(OpenAISettings(output="json_schema")).name == "openai:json_schema+logprobs"


@pytest.mark.parametrize("yaml_text, needle", [
    ("labels:\n  openai: {model: o3, output: logprobs}\n", "output: json_schema"),
    ("labels:\n  openai: {samples: 5}\n", "temperature"),
    ("labels:\n  openai: {azure_endpoint: 'https://x.openai.azure.com'}\n", "api_version"),
    ("labels:\n  backend: judges\n  judges: [{backend: openai}]\n", "at least two judges"),
    ("labels:\n  backend: grader\n  batch: {enabled: true}\n", "backend 'openai'"),
])
def test_incoherent_settings_are_one_clear_config_error(tmp_path, yaml_text, needle):
    class Wrap(StrictConfig):  # a top-level `labels:` section, as in the run config
        labels: LabelConfig

    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match="labels") as ei:
        load_config(p, Wrap)
    assert needle in str(ei.value) and "Fix" in str(ei.value) and "\n" not in str(ei.value)


def test_reasoning_model_gets_its_own_request_shape_and_a_json_answer(tmp_path):
    pairs = _pairs(3)
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="gpt-5-mini"), prices={"gpt-5-mini": (1.0, 2.0)})
        cache = LabelCache(tmp_path / "c.sqlite")
        res, _, n_new = grade_with_cache(be, pairs, cache)
        req = srv.last_request
        assert "max_tokens" not in req and "temperature" not in req and "logprobs" not in req
        assert req["max_completion_tokens"] == 2048 and req["reasoning_effort"] == "low"
        assert req["response_format"]["json_schema"]["schema"]["required"] == ["intent", "match", "grade"]
        assert n_new == 3 and srv.completed == 3 and be.stats["retries"] == 0
        for pair, r in zip(pairs, res):
            assert r.probs == _one_hot(grade_for(_prompt(be, pair)))
            assert r.output_mode == "json_schema/one-hot"  # said, not silent
            assert r.tokens_out > 64  # the reasoning tokens are billed as output
        with sqlite3.connect(tmp_path / "c.sqlite") as db:
            assert {m for (m,) in db.execute("SELECT output_mode FROM labels")} == {"json_schema/one-hot"}
        cache.close()


def test_chat_shape_sent_to_a_reasoning_model_is_a_clear_400_not_retried(tmp_path):
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="gpt-5-mini", profile="chat"))
        cache = LabelCache(tmp_path / "c.sqlite")
        with pytest.raises(LabelerError, match="HTTP 400.*max_tokens.*profile: reasoning"):
            grade_with_cache(be, _pairs(1), cache)
        assert srv.received == 1 and be.stats["retries"] == 0 and cache.count() == 0
        be = OpenAIBackend(_settings(srv, model="gpt-5-mini", profile={"token_param": "max_completion_tokens",
                                                                       "temperature": True}))
        with pytest.raises(LabelerError, match="HTTP 400.*temperature"):
            be.grade(_pairs(1))


def test_reasoning_budget_spent_on_thinking_is_a_clear_error():
    with OpenAIServer(reasoning_tokens=64) as srv:
        be = OpenAIBackend(_settings(srv, model="o4-mini", max_tokens=32))
        with pytest.raises(LabelerError, match="finish_reason 'length'.*raise openai.max_tokens"):
            be.grade(_pairs(1))


def test_n_samples_give_the_empirical_distribution():
    pairs = _pairs(2)
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="gpt-5-nano", samples=7))
        res = be.grade(pairs)
        assert srv.last_request["n"] == 7
        for pair, r in zip(pairs, res):
            votes = [sampled_grade(_prompt(be, pair), i) for i in range(7)]
            assert r.probs == pytest.approx([votes.count(g) / 7 for g in range(4)])
            assert r.output_mode == "json_schema+samples:7/one-hot"
        assert len({r.probs for r in res} | {_one_hot(0), _one_hot(1), _one_hot(2), _one_hot(3)}) > 4


def test_structured_output_with_logprobs_reads_the_grade_token_not_other_digits():
    pairs = _pairs(3)  # the intent the server writes repeats "size 8": digits before the grade
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, output="json_schema"))
        res = be.grade(pairs)
        req = srv.last_request
        assert req["response_format"]["type"] == "json_schema" and req["logprobs"] is True and req["max_tokens"] == 256
        assert "JSON object" in req["messages"][-1]["content"]
        assert "single digit" not in req["messages"][-1]["content"]
        for pair, r in zip(pairs, res):
            d = distribution_for(_prompt(be, pair))
            assert r.probs == pytest.approx([x / sum(d) for x in d])
            assert r.output_mode == "json_schema+logprobs/logprobs"


@pytest.mark.parametrize("via", ["guided_json", "json_schema"])
def test_structured_output_through_vllm_and_llama_cpp_fields(via):
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="qwen-local", output="json_schema", structured_via=via,
                                     profile={"logprobs": False}))
        (r,) = be.grade(_pairs(1))
        req = srv.last_request
        assert req[via]["properties"]["grade"]["enum"] == [0, 1, 2, 3] and "response_format" not in req
        assert r.probs == _one_hot(grade_for(_prompt(be, _pairs(1)[0]))) and r.output_mode == "json_schema/one-hot"


def test_structured_output_through_llama_cpp_python_json_object():
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="smollm2", output="json_schema", structured_via="json_object",
                                     profile={"logprobs": False}))
        (r,) = be.grade(_pairs(1))
        rf = srv.last_request["response_format"]
        assert rf["type"] == "json_object" and rf["schema"]["properties"]["grade"]["enum"] == [0, 1, 2, 3]
        assert r.probs == _one_hot(grade_for(_prompt(be, _pairs(1)[0]))) and r.output_mode == "json_schema/one-hot"


def test_text_output_and_missing_logprobs_are_stated_one_hot():
    with OpenAIServer(mode="no_logprobs_text") as srv:
        (r,) = OpenAIBackend(_settings(srv)).grade(_pairs(1))
        assert r.output_mode == "logprobs/one-hot"  # asked for logprobs, got none: said so
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, model="o3", output="text"))
        (r,) = be.grade(_pairs(1))
        assert "response_format" not in srv.last_request and r.output_mode == "text/one-hot"
        assert be.name == "openai:text:effort=low"


@pytest.mark.parametrize("mode, low, high", [("429_date", 0.95, 3.0), ("429_ms", 0.35, 0.9)])
def test_retry_after_as_http_date_and_as_milliseconds(mode, low, high):
    with OpenAIServer() as srv:
        srv.script([mode])
        be = OpenAIBackend(_settings(srv, concurrency=1))  # our own backoff is at most 0.05 s
        (r,) = be.grade(_pairs(1))
        gap = srv.request_times[1] - srv.request_times[0]
        assert low <= gap < high and be.stats["retries"] == 1 and r is not None


def test_retry_after_beyond_the_cap_fails_at_once_with_the_fix():
    with OpenAIServer() as srv:
        srv.script(["429_long"])
        be = OpenAIBackend(_settings(srv, retry_after_max_s=30))
        t0 = time.perf_counter()
        with pytest.raises(LabelerError, match="wait 3600s.*retry_after_max_s=30.*Fix"):
            be.grade(_pairs(1))
        assert time.perf_counter() - t0 < 2 and srv.received == 1


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "Tue, 14 Nov 2023 22:13:40 GMT"}, now=now) == pytest.approx(20.0)
    assert retry_after_s({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, now=now) == 0.0  # in the past
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_azure_deployment_url_api_version_and_key_header():
    with OpenAIServer() as srv:
        s = OpenAISettings(azure_endpoint=srv.root_url, api_version="2024-10-21", model="grader-4o", api_key="az-key",
                           max_retries=0)
        (r,) = OpenAIBackend(s).grade(_pairs(1))
        assert srv.last_path == "/openai/deployments/grader-4o/chat/completions?api-version=2024-10-21"
        assert {k.lower(): v for k, v in srv.last_headers.items()}["api-key"] == "az-key"
        assert r.output_mode == "logprobs/logprobs"


def test_a_cache_from_before_output_modes_still_answers(tmp_path):
    """Rows written by the httpx-era backend (no output_mode column, backend 'openai') are served as they are."""
    pair = _pairs(1)[0]
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE labels (key TEXT PRIMARY KEY, backend TEXT NOT NULL, model TEXT NOT NULL, "
                   "prompt_version TEXT NOT NULL, query TEXT NOT NULL, text_hash TEXT NOT NULL, "
                   "query_id TEXT NOT NULL, product_id TEXT NOT NULL, p0 REAL NOT NULL, p1 REAL NOT NULL, "
                   "p2 REAL NOT NULL, p3 REAL NOT NULL, hard_grade INTEGER, tokens_in INTEGER NOT NULL, "
                   "tokens_out INTEGER NOT NULL, cost REAL NOT NULL, created_at REAL NOT NULL)")
        pv = LabelConfig().prompt_version
        db.execute("INSERT INTO labels VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (cache_key("openai", "local-test", pv, pair.query, pair.text_hash), "openai", "local-test", pv,
                    normalize_query(pair.query), pair.text_hash, pair.query_id, pair.product_id, 0.1, 0.2, 0.3, 0.4,
                    None, 10, 1, 0.0, 0.0))
    with OpenAIServer() as srv:
        cache = LabelCache(old)
        res, n_cached, n_new = grade_with_cache(OpenAIBackend(_settings(srv)), [pair], cache)
        assert (n_cached, n_new, srv.received) == (1, 0, 0) and res[0].probs == (0.1, 0.2, 0.3, 0.4)
        res, _, n_new = grade_with_cache(OpenAIBackend(_settings(srv, output="json_schema")), [pair], cache)
        assert n_new == 1 and srv.received == 1  # another output mode is another answer: not served from it
        cache.close()
