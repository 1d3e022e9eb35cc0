"""The service survives what happens to its online store file while it serves: truncated, corrupted, moved
away, locked. Each time: no crash (a memory-mapped read of a truncated file would kill the process with
SIGBUS, and this test process with it), responses keep coming flagged `degraded` with the reason, /health says
degraded, and everything recovers once the file is back. Public responses never show server paths."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from fastapi.testclient import TestClient

from ltr import tracking as T
from ltr.serving.app import create_app
from tests.fixtures.serving_world import build_world, request_body

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    w = build_world(root, "ltr-faults-test")
    with T.using_tracking(w["tracking"], "faults"):
        app = create_app(w["uri"], w["feat"], bi_encoder=w["ce"], embedding_cache=None,
                         serving={"reload_poll_s": 0, "ce_deadline_ms": 60_000})
        with TestClient(app) as c:
            yield {**w, "client": c, "online": w["feat"] / "feast" / "online.db"}
    mp.undo()


def _rank(s, k):
    """A request the store has never answered (so no cached rows hide the file's state)."""
    body = request_body(s, k)
    body["query"] = f"{body['query']} {time.time_ns()}"  # a new query: its rows must be read from the file
    r = s["client"].post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _healthy(s):
    h = s["client"].get("/health").json()
    return h["status"] == "ok" and not _rank(s, 0)["degraded"]


def _assert_degraded(s, needle):
    body = _rank(s, 1)
    assert body["degraded"] and body["store"] == "error" and any(needle in r for r in body["degraded_reasons"])
    assert len(body["results"]) == 12                       # still ranked, from request-time features
    h = s["client"].get("/health").json()
    assert h["status"] == "degraded" and h["store"]["ok"] is False
    for text in (str(body), str(h)):
        assert str(s["root"]) not in text and "/tmp" not in text   # no server paths in public responses


def test_truncated_store_degrades_and_recovers(served):
    assert _healthy(served)
    original = served["online"].read_bytes()
    with open(served["online"], "r+b") as fh:
        fh.truncate(0)                                      # same file, now empty
    _assert_degraded(served, "online store unavailable")
    served["online"].write_bytes(original)                  # back in place (same inode)
    assert _healthy(served)


def test_corrupted_store_degrades_and_recovers(served):
    original = served["online"].read_bytes()
    with open(served["online"], "r+b") as fh:
        fh.write(b"this is not an SQLite file" * 8)         # the header is gone
    _assert_degraded(served, "online store unavailable")
    served["online"].write_bytes(original)
    assert _healthy(served)


def test_moved_store_degrades_and_recovers(served):
    away = served["online"].with_suffix(".away")
    shutil.move(served["online"], away)
    _assert_degraded(served, "missing")
    shutil.move(away, served["online"])                     # a new inode: the reader reopens it
    assert _healthy(served)


def test_locked_store_fails_fast_and_recovers(served):
    con = sqlite3.connect(served["online"], timeout=1)
    con.execute("BEGIN EXCLUSIVE")                          # a writer holds the file
    try:
        t0 = time.perf_counter()
        _assert_degraded(served, "locked")
        assert time.perf_counter() - t0 < 10                # a short busy timeout, not the default minutes
    finally:
        con.rollback()
        con.close()
    assert _healthy(served)
