"""OpenAI-compatible backend against a real local HTTP server (tests/openai_server.py)."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from openai_server import OpenAIServer, distribution_for, grade_for

from labels.backends.base import LabelerError, Pair
from labels.backends.openai import OpenAIBackend, parse_grade
from labels.cache import LabelCache, grade_with_cache
from labels.config import LabelConfig, OpenAISettings
from labels.cost import CostMeter
from labels.run import label_pairs
from ltr.data.dataset import read_table, write_table
from ltr.data.schemas import LABELS, query_id

REPO = Path(__file__).resolve().parents[1]


def _pairs(n: int = 4) -> list[Pair]:
    out = []
    for i in range(n):
        q = f"red running shoes size {i % 3 + 8}"
        out.append(Pair(query_id(q), q, f"P{i}", {"title": f"Trail runner model {i}", "brand": "Acme",
                                                    "color": "red", "category": "Shoes > Running"}))
    return out


def _settings(srv: OpenAIServer, **kw) -> OpenAISettings:
    base = dict(base_url=srv.base_url, model="local-test", api_key="sk-test", backoff_base_s=0.01,
                backoff_max_s=0.05, max_retries=3, timeout_s=1.0, concurrency=4)
    base.update(kw)
    return OpenAISettings(**base)


def _prompt_text(backend: OpenAIBackend, pair: Pair) -> str:
    return "\n".join(m["content"] for m in backend.prompt.messages(pair.query, pair.product))


def _cache_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT key, p0, p1, p2, p3 FROM labels").fetchall())


def test_happy_path_distribution_from_logprobs(tmp_path):
    pairs = _pairs(6)
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv), prices={"local-test": (1.0, 2.0)})
        cache = LabelCache(tmp_path / "c.sqlite")
        res, n_cached, n_new = grade_with_cache(be, pairs, cache)
        assert (n_cached, n_new) == (0, 6)
        for pair, r in zip(pairs, res):
            expect = distribution_for(_prompt_text(be, pair))
            assert r.probs == pytest.approx([x / sum(expect) for x in expect], abs=1e-6)
            assert r.grade == grade_for(_prompt_text(be, pair))
            assert 0 <= r.score <= 1 and r.tokens_in > 0 and r.cost > 0
        assert srv.completed == 6
        # second pass: everything from the cache, the server is not called again
        res2, n_cached, n_new = grade_with_cache(be, pairs, cache)
        assert (n_cached, n_new) == (6, 0) and srv.received == 6
        assert [r.probs for r in res2] == [r.probs for r in res]
        cache.close()


def test_extra_body_reaches_the_server():
    """Server-specific fields (a llama.cpp grammar) travel in the request body beside the standard ones."""
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, extra_body={"grammar": "root ::= [0-3]"}))
        be.grade(_pairs(1))
        req = srv.last_request
        assert req["grammar"] == "root ::= [0-3]"
        assert req["logprobs"] is True and req["top_logprobs"] == 10 and req["model"] == "local-test"


@pytest.mark.parametrize("failure", ["429", "500", "malformed", "timeout"])
def test_transient_failure_then_success(tmp_path, failure):
    pairs = _pairs(1)
    with OpenAIServer(timeout_sleep=0.6) as srv:
        srv.script([failure])
        be = OpenAIBackend(_settings(srv, timeout_s=0.3, concurrency=1))
        cache = LabelCache(tmp_path / "c.sqlite")
        res, _, n_new = grade_with_cache(be, pairs, cache)
        assert n_new == 1 and res[0] is not None
        assert res[0].grade == grade_for(_prompt_text(be, pairs[0]))
        assert be.stats["retries"] == 1 and srv.received == 2
        assert cache.count() == 1
        cache.close()


@pytest.mark.parametrize("failure,match", [("500", "gave up.*HTTP 500"), ("429", "gave up.*HTTP 429"),
                                           ("malformed", "gave up.*malformed JSON"), ("timeout", "gave up.*timeout"),
                                           ("bad_grade", "outside 0-3")])
def test_persistent_failure_is_a_clear_error_and_cache_untouched(tmp_path, failure, match):
    pairs = _pairs(3)
    with OpenAIServer(timeout_sleep=0.5) as srv:
        be = OpenAIBackend(_settings(srv, timeout_s=0.2, concurrency=1, max_retries=1))
        cache = LabelCache(tmp_path / "c.sqlite")
        grade_with_cache(be, pairs[:2], cache)  # two good rows first
        before = _cache_rows(tmp_path / "c.sqlite")
        srv.default_mode = failure
        with pytest.raises(LabelerError, match=match):
            grade_with_cache(be, pairs[2:], cache)
        assert _cache_rows(tmp_path / "c.sqlite") == before  # nothing added, nothing changed
        cache.close()


def test_missing_logprobs_falls_back_to_text(tmp_path):
    pairs = _pairs(2)
    with OpenAIServer(mode="no_logprobs_text") as srv:
        be = OpenAIBackend(_settings(srv))
        res = be.grade(pairs)
        for pair, r in zip(pairs, res):
            g = grade_for(_prompt_text(be, pair))
            assert r.probs == tuple(1.0 if k == g else 0.0 for k in range(4))


def test_http_4xx_is_not_retried():
    with OpenAIServer() as srv:
        s = _settings(srv, base_url=srv.base_url + "/wrong")
        be = OpenAIBackend(s)
        with pytest.raises(LabelerError, match="HTTP 404.*Fix"):
            be.grade(_pairs(1))
        assert srv.received == 0 and be.stats["retries"] == 0


def test_server_down_is_retried_then_a_clear_error(tmp_path):
    """Connection refused: our retries (the client's own are off: one request per attempt), then the fix."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key="k", max_retries=2,
                       backoff_base_s=0.01, backoff_max_s=0.02)
    be = OpenAIBackend(s)
    cache = LabelCache(tmp_path / "c.sqlite")
    with pytest.raises(LabelerError, match="gave up.*3 attempts: connection error.*Fix"):
        grade_with_cache(be, _pairs(1), cache)
    assert be.stats == {"requests": 3, "retries": 2} and cache.count() == 0
    cache.close()


def test_the_client_does_not_retry_on_its_own():
    with OpenAIServer() as srv:
        srv.script(["500", "500"])
        be = OpenAIBackend(_settings(srv, max_retries=1, concurrency=1))
        with pytest.raises(LabelerError, match="2 attempts: HTTP 500"):
            be.grade(_pairs(1))
        assert srv.received == 2 == be.stats["requests"]  # the openai client's default would have sent 3 each


def test_grade_called_inside_a_running_event_loop():
    """A notebook cell runs inside an event loop: grade() then runs its own loop on a thread."""
    import asyncio
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv))

        async def cell():
            return be.grade(_pairs(2))

        assert [r.product_id for r in asyncio.run(cell())] == ["P0", "P1"] and srv.completed == 2


def test_parse_grade_edge_cases():
    body = {"choices": [{"message": {"content": "2"}, "logprobs": {"content": [
        {"token": "2", "logprob": math.log(0.6), "top_logprobs": [
            {"token": "2", "logprob": math.log(0.6)}, {"token": " 3", "logprob": math.log(0.3)},
            {"token": "x", "logprob": math.log(0.1)}]}]}}], "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
    p, tin, tout = parse_grade(body)
    assert p == pytest.approx((0, 0, 2 / 3, 1 / 3)) and (tin, tout) == (10, 1)
    with pytest.raises(LabelerError, match="no grade"):
        parse_grade({"choices": [{"message": {"content": "relevant"}}]})


def test_budget_stops_before_exceeding(tmp_path):
    pairs = _pairs(12)
    with OpenAIServer() as srv:
        prices = {"local-test": (1000.0, 1000.0)}  # $1e-3 per token: each request costs ~$0.1-0.3
        meter = CostMeter(max_dollars=1.0)
        be = OpenAIBackend(_settings(srv, concurrency=2), meter=meter, prices=prices)
        cache = LabelCache(tmp_path / "c.sqlite")
        res, _, n_new = grade_with_cache(be, pairs, cache)
        assert be.stopped_reason == "budget"
        assert 0 < n_new < len(pairs)
        assert meter.spent <= 1.0
        assert cache.count() == n_new == srv.completed
        cache.close()


def test_rate_limit_spaces_requests():
    with OpenAIServer() as srv:
        be = OpenAIBackend(_settings(srv, concurrency=8, requests_per_second=20))
        t0 = time.perf_counter()
        be.grade(_pairs(6))
        assert time.perf_counter() - t0 >= 5 / 20 * 0.9


# --- kill -9 in the middle of a labelling run --------------------------------------------------

def _tiny_dataset(root: Path, n_queries: int = 4, per_query: int = 6) -> Path:
    prods, judg = [], []
    for qi in range(n_queries):
        q = f"query number {qi} wireless headphones"
        for j in range(per_query):
            pid = f"B{qi:02d}{j:02d}"
            prods.append({"product_id": pid, "title": f"Headphones {pid} bluetooth", "description": "Nice sound.",
                          "bullet_points": "Long battery", "brand": "Sono", "color": "black",
                          "category": "Electronics > Headphones", "price": 20.0 + j, "rating": 4.1,
                          "rating_count": 100.0 * j})
            judg.append({"query": q, "product_id": pid, "grade": (qi + j) % 4})
    write_table(pd.DataFrame(prods), root / "products.parquet", "products")
    write_table(pd.DataFrame(judg), root / "judgments.parquet", "judgments")
    return root


def _run_cfg(srv: OpenAIServer, cache: Path) -> dict:
    return {"backend": "openai", "cache_path": str(cache), "calibrate": False,
            "openai": {"base_url": srv.base_url, "model": "local-test", "api_key": "k", "concurrency": 2,
                       "timeout_s": 5, "backoff_base_s": 0.01}}


def test_kill9_midway_then_rerun_equals_uninterrupted(tmp_path):
    ds = _tiny_dataset(tmp_path / "ds")
    n_pairs = 24
    # uninterrupted reference run (its own cache)
    with OpenAIServer(latency=0.0) as ref_srv:
        cfg = LabelConfig.model_validate(_run_cfg(ref_srv, tmp_path / "ref.sqlite"))
        label_pairs(ds, tmp_path / "ref" / "labels.parquet", cfg, progress=False)
        assert ref_srv.completed == n_pairs
    with OpenAIServer(latency=0.15) as srv:
        cache = tmp_path / "run" / "cache.sqlite"
        cfg_path = tmp_path / "cfg.json"
        cfg_path.write_text(json.dumps(_run_cfg(srv, cache)))
        cmd = [sys.executable, "-m", "labels.run", str(ds), str(tmp_path / "run" / "labels.parquet"),
               "--config", str(cfg_path), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        stored = 0
        while time.time() < deadline:
            if cache.exists():
                try:
                    with sqlite3.connect(cache, timeout=1) as db:
                        stored = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
            if stored >= 8 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"labeller ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "run" / "labels.parquet").exists()
        with sqlite3.connect(cache) as db:
            stored_at_kill = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        assert 8 <= stored_at_kill < n_pairs
        time.sleep(0.4)  # let the server finish answering the requests the kill cut off
        aborted_at_kill = srv.aborted
        # re-run to completion
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        summary = json.loads(r.stdout)
        assert summary["n_from_cache"] == stored_at_kill and summary["n_graded_now"] == n_pairs - stored_at_kill
        # every pair was answered exactly once across both runs: nothing stored was ever paid twice
        assert srv.completed == n_pairs
        assert all(c == 1 for c in srv.per_prompt.values()) and len(srv.per_prompt) == n_pairs
        # requests cut off by the kill (in flight, never answered) are the only extra requests
        assert srv.received == n_pairs + srv.aborted and srv.aborted == aborted_at_kill <= 2
    ref = read_table(tmp_path / "ref" / "labels.parquet", LABELS).drop(columns=["created_at"])
    got = read_table(tmp_path / "run" / "labels.parquet", LABELS).drop(columns=["created_at"])
    pd.testing.assert_frame_equal(ref, got)
