"""Bounds checked before work, over real HTTP: an oversized body is refused with 413 before it is read whole
(declared or chunked), over-long ids are 422 naming the field, and past `max_inflight` requests in progress
the next one gets 503 with Retry-After instead of waiting in an unbounded queue."""
from __future__ import annotations

import os
import socket
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import pytest
import torch

from ltr import tracking as T
from ltr.serving.app import create_app
from tests.fixtures.serving_world import LiveServer, build_world, request_body, wait_for

torch.set_num_threads(2)
MAX_BODY = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    with T.using_tracking(f"sqlite:///{root}/mlflow.db", "limits"):
        w = build_world(root, "ltr-limits-test")
        app = create_app(w["uri"], w["feat"], bi_encoder=w["ce"], embedding_cache=None,
                         serving={"reload_poll_s": 0, "max_body_bytes": MAX_BODY, "max_inflight": 1,
                                  "max_id_chars": 20})
        with LiveServer(app) as srv:
            yield {**w, "url": srv.url, "app": app}
    mp.undo()


def _detail(r):
    d = r.json()["detail"][0]
    return d["loc"], d["msg"]


def test_declared_oversized_body_is_413_at_once(server):
    body = b'{"query": "red", "product_ids": [' + b'"D0001",' * 200_000 + b'"D0002"]}'   # ~1.6 MB
    t0 = time.perf_counter()
    r = httpx.post(f"{server['url']}/v1/rank", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "over the limit of 4096 bytes" in _detail(r)[1]
    assert time.perf_counter() - t0 < 10


def test_chunked_oversized_body_is_413_while_it_arrives(server):
    def chunks():
        yield b'{"query": "red", "product_ids": ['
        for _ in range(2000):                                # no Content-Length: counted as it arrives
            yield b'"D0001",' * 10
        yield b'"D0002"]}'

    r = httpx.post(f"{server['url']}/v1/rank", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "Fix" in _detail(r)[1]


def test_overlong_id_is_422_naming_the_field(server):
    body = request_body(server, 0)
    body["product_ids"] = body["product_ids"][:2] + ["X" * 21]
    r = httpx.post(f"{server['url']}/v1/rank", json=body, timeout=30)
    assert r.status_code == 422
    loc, msg = _detail(r)
    assert loc[-1] == "product_ids" and "longer than 20 characters" in msg


def test_past_max_inflight_is_503_with_retry_after(server):
    """A request whose body is still arriving holds the one slot; the next is turned away, not queued."""
    port = int(server["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n{\"query\": ")
        limits = server["app"].state.service
        assert wait_for(lambda: limits.limits is not None and limits.limits.inflight == 1, timeout=10)
        r = httpx.post(f"{server['url']}/v1/rank", json=request_body(server, 0), timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "limit of 1 requests in progress" in _detail(r)[1]
    assert wait_for(lambda: server["app"].state.service.limits.inflight == 0, timeout=10)
    assert httpx.post(f"{server['url']}/v1/rank", json=request_body(server, 0), timeout=30).status_code == 200
    metrics = httpx.get(f"{server['url']}/metrics", timeout=30).text
    assert 'ltr_rank_requests_total{status="503"} 1.0' in metrics
