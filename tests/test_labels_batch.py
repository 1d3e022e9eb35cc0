"""The Batch API path (`ltr label --batch`) against the real local server's /v1/files and /v1/batches.

Every test counts what the server billed (`paid()`: live answers plus batch lines answered, per prompt),
so paying twice for a pair, or losing one, fails the test.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import OpenAIServer, distribution_for
from test_labels_openai import _tiny_dataset

from labels.backends.base import Pair
from labels.backends.openai import OpenAIBackend
from labels.batch import BatchRun, Ledger, grade_in_batches
from labels.cache import LabelCache
from labels.config import BatchSettings, OpenAISettings
from labels.cost import CostMeter
from ltr.data.dataset import read_table
from ltr.data.schemas import LABELS, query_id

REPO = Path(__file__).resolve().parents[1]
FAST = BatchSettings(enabled=True, poll_s=0.01)


def _pairs(n: int) -> list[Pair]:
    return [Pair(query_id(f"usb cable {i}"), f"usb cable {i}", f"P{i}", {"title": f"USB-C cable {i} m"})
            for i in range(n)]


def _backend(srv: OpenAIServer, meter: CostMeter | None = None, **kw) -> OpenAIBackend:
    s = OpenAISettings(**{**dict(base_url=srv.base_url, model="gpt-4o-mini", api_key="k", backoff_base_s=0.01,
                                 backoff_max_s=0.05, max_retries=2, timeout_s=5), **kw})
    return OpenAIBackend(s, meter=meter)


def test_batch_fills_the_cache_at_half_price_and_a_rerun_submits_nothing(tmp_path):
    pairs = _pairs(5)
    with OpenAIServer() as srv:
        be = _backend(srv)
        cache = LabelCache(tmp_path / "c.sqlite")
        rep = grade_in_batches(be, pairs, cache, FAST)
        assert (rep["submitted"], rep["from_batch"], rep["failed"], rep["retried_live"]) == (5, 5, [], 0)
        assert srv.api_calls["POST /v1/files"] == 1 and srv.api_calls["POST /v1/batches"] == 1
        assert srv.api_calls["GET /v1/batches/{id}"] == 3 and srv.completed == 0  # 3 polls to completed; no live call
        lines = [json.loads(x) for x in srv.uploads[0].splitlines()]
        assert {x["custom_id"] for x in lines} == {cache.key(be.name, be.model, be.prompt_version, p) for p in pairs}
        assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["logprobs"] is True
        got = cache.get_many(be.name, be.model, be.prompt_version, pairs)
        one = got[cache.key(be.name, be.model, be.prompt_version, pairs[0])]
        d = distribution_for("\n".join(m["content"] for m in be.messages(pairs[0])))
        assert one.probs == pytest.approx([x / sum(d) for x in d]) and one.output_mode == "logprobs/logprobs"
        live_price = (one.tokens_in * be.price_in + one.tokens_out * be.price_out) / 1e6  # gpt-4o-mini's table price
        assert one.cost == pytest.approx(live_price / 2) and one.cost > 0
        rep2 = grade_in_batches(_backend(srv), pairs, cache, FAST)
        assert rep2["submitted"] == 0 and srv.api_calls["POST /v1/batches"] == 1
        assert all(c == 1 for c in srv.paid().values()) and len(srv.paid()) == 5
        cache.close()


@pytest.mark.parametrize("retry_failed", ["live", "report"])
def test_failed_lines_are_retried_live_or_reported_pair_by_pair(tmp_path, retry_failed):
    pairs = _pairs(4)
    with OpenAIServer(batch_line_errors={0: 500, 2: 400}) as srv:
        be = _backend(srv)
        cache = LabelCache(tmp_path / "c.sqlite")
        rep = grade_in_batches(be, pairs, cache, BatchSettings(poll_s=0.01, retry_failed=retry_failed))
        lines = [json.loads(x) for x in srv.uploads[0].splitlines()]
        by_line = {i: next(p for p in pairs if cache.key(be.name, be.model, be.prompt_version, p) == x["custom_id"])
                   for i, x in enumerate(lines)}
        failed = {(f["product_id"], f["retryable"]) for f in rep["failed"]}
        if retry_failed == "live":  # the 500 is retried live; the 400 would fail again: reported
            assert rep["retried_live"] == 1 and srv.completed == 1 and cache.count() == 3
            assert failed == {(by_line[2].product_id, False)}
        else:
            assert rep["retried_live"] == 0 and srv.completed == 0 and cache.count() == 2
            assert failed == {(by_line[0].product_id, True), (by_line[2].product_id, False)}
        assert all("HTTP" in f["error"] for f in rep["failed"])
        assert all(c == 1 for c in srv.paid().values())
        cache.close()


def test_expired_lines_are_retried_live(tmp_path):
    pairs = _pairs(5)
    with OpenAIServer(batch_expire_after=2) as srv:
        cache = LabelCache(tmp_path / "c.sqlite")
        rep = grade_in_batches(_backend(srv), pairs, cache, FAST)
        assert (rep["from_batch"], rep["retried_live"], rep["failed"]) == (2, 3, [])
        assert cache.count() == 5 and all(c == 1 for c in srv.paid().values()) and len(srv.paid()) == 5
        cache.close()


def test_budget_limits_what_is_submitted(tmp_path):
    pairs = _pairs(6)
    with OpenAIServer() as srv:
        s = OpenAISettings(base_url=srv.base_url, model="priced", api_key="k")
        est = OpenAIBackend(s, prices={"batch:priced": (10.0, 10.0)}).estimate_dollars(pairs[0], batch=True)
        meter = CostMeter(max_dollars=2.5 * est)  # room for two worst-case requests
        be = OpenAIBackend(s, meter=meter, prices={"batch:priced": (10.0, 10.0)})
        cache = LabelCache(tmp_path / "c.sqlite")
        rep = grade_in_batches(be, pairs, cache, FAST)
        assert rep["stopped_reason"] == "budget" and rep["submitted"] == 2 == cache.count()
        assert 0 < meter.spent <= 2.5 * est and meter.reserved == 0
        cache.close()


def test_a_batch_created_but_not_recorded_is_found_not_paid_again(tmp_path):
    """A kill between creating the batch and recording its id: the re-run finds it by its input file."""
    pairs = _pairs(3)
    with OpenAIServer() as srv:
        be = _backend(srv)
        cache = LabelCache(tmp_path / "c.sqlite")
        run = BatchRun(be, cache, FAST)
        todo = [(cache.key(be.name, be.model, be.prompt_version, p), p) for p in pairs]

        async def upload_record_create_then_die() -> None:
            async with be.make_client() as client:
                f = await client.files.create(file=("in.jsonl", run._jsonl(todo)), purpose="batch")
                run.ledger.record_upload(f.id, run.namespace, [(k, p.query, p.text_hash, p.query_id, p.product_id,
                                                                "[]") for k, p in todo])
                await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")

        import asyncio
        asyncio.run(upload_record_create_then_die())
        run.ledger.close()
        rep = grade_in_batches(_backend(srv), pairs, cache, FAST)
        assert srv.api_calls["POST /v1/batches"] == 1 and rep["submitted"] == 0 and rep["from_batch"] == 3
        assert cache.count() == 3 and all(c == 1 for c in srv.paid().values())
        cache.close()


def test_a_create_that_timed_out_but_landed_is_not_created_again(tmp_path):
    pairs = _pairs(3)
    with OpenAIServer(batch_create_sleep=1.0) as srv:
        cache = LabelCache(tmp_path / "c.sqlite")
        be = _backend(srv, timeout_s=0.4)
        rep = grade_in_batches(be, pairs, cache, FAST)
        assert be.stats["retries"] >= 1 and srv.api_calls["POST /v1/batches"] == 1 and rep["from_batch"] == 3
        assert all(c == 1 for c in srv.paid().values()) and len(srv.paid()) == 3
        cache.close()


def _cfg(srv: OpenAIServer, cache: Path, poll_s: float) -> dict:
    return {"backend": "openai", "cache_path": str(cache), "calibrate": False,
            "batch": {"enabled": True, "poll_s": poll_s},
            "openai": {"base_url": srv.base_url, "model": "gpt-5-mini", "api_key": "k", "backoff_base_s": 0.01}}


def test_ltr_label_batch_killed_while_polling_resumes_without_paying_twice(tmp_path):
    from typer.testing import CliRunner

    from ltr.cli import app
    ds = _tiny_dataset(tmp_path / "ds", n_queries=3, per_query=4)
    n_pairs, cache = 12, tmp_path / "run" / "cache.sqlite"
    with OpenAIServer(batch_polls_per_step=1000) as srv:  # the batch stays "validating" while the first run polls
        (tmp_path / "cfg.json").write_text(json.dumps(_cfg(srv, cache, poll_s=0.05)))
        cmd = [sys.executable, "-m", "labels.run", str(ds), str(tmp_path / "run" / "labels.parquet"),
               "--config", str(tmp_path / "cfg.json"), "--no-progress", "--batch"]
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 90
        while srv.api_calls["GET /v1/batches/{id}"] < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the labeller ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(cache) as db:
            assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
            assert db.execute("SELECT status FROM batches").fetchall() == [("validating",)]
        srv.batch_polls_per_step = 1
        (tmp_path / "run.yaml").write_text(json.dumps({"labels": _cfg(srv, cache, poll_s=0.01)}))
        out = tmp_path / "run" / "labels.parquet"
        res = CliRunner().invoke(app, ["label", "--batch", "--dataset", str(ds), "--out", str(out),
                                       "--config", str(tmp_path / "run.yaml")])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert summary["batch"]["submitted"] == 0 and summary["batch"]["from_batch"] == n_pairs
        assert summary["n_graded_now"] == n_pairs and summary["n_not_graded"] == 0
        # one upload, one batch, every pair billed exactly once, nothing live
        assert srv.api_calls["POST /v1/files"] == 1 and srv.api_calls["POST /v1/batches"] == 1
        assert srv.completed == 0 and len(srv.paid()) == n_pairs and set(srv.paid().values()) == {1}
    lab = read_table(tmp_path / "run" / "labels.parquet", LABELS)
    assert len(lab) == n_pairs and set(lab["output_mode"]) == {"json_schema/one-hot"}
    assert set(lab["backend"]) == {"openai:json_schema:effort=low"}
    assert summary["cost_this_run"]["dollars"] == pytest.approx(lab["cost"].sum(), abs=1e-6) and lab["cost"].min() > 0


def test_ltr_label_batch_needs_the_openai_backend(tmp_path):
    from typer.testing import CliRunner

    from ltr.cli import app
    res = CliRunner().invoke(app, ["label", "--batch", "--backend", "grader", "--dataset", str(tmp_path),
                                   "--out", str(tmp_path / "l.parquet")])
    assert res.exit_code == 2 and "backend 'openai'" in res.output and "Traceback" not in res.output


def test_ledger_survives_reopen(tmp_path):
    led = Ledger(tmp_path / "c.sqlite")
    led.record_upload("file_1", "ns", [("k1", "q", "h", "qid", "pid", "[]")])
    led.update("file_1", "in_progress", "batch_1")
    led.close()
    led = Ledger(tmp_path / "c.sqlite")
    assert led.open_batches("ns") == [{"input_file_id": "file_1", "batch_id": "batch_1", "status": "in_progress",
                                       "n_requests": 1}]
    led.update("file_1", "ingested")
    assert led.open_batches("ns") == [] and led.requests("file_1") == {"k1": ("q", "h", "qid", "pid", "[]")}
    led.close()


@pytest.mark.parametrize("line, retryable, needle", [
    ({"custom_id": "k", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}}, True, "HTTP 500"),
    ({"custom_id": "k", "response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}, True, "HTTP 429"),
    ({"custom_id": "k", "response": {"status_code": 400, "body": {"error": {"message": "bad"}}}}, False, "bad"),
    ({"custom_id": "k", "response": None, "error": {"code": "batch_expired", "message": "late"}}, True, "expired"),
    ({"custom_id": "k", "response": "garbage", "error": None}, False, "HTTP 0"),
])
def test_failed_line_shapes(line, retryable, needle):
    from labels.batch import _line_outcome
    body, failure, again = _line_outcome(line)
    assert body is None and needle in failure and again is retryable
