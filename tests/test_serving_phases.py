"""Phased ranking and its parts: the cross-encoder batcher (earliest deadline first, batches across requests,
a deadline that cuts work off, leftovers finished when idle), the three phases in the service, and the
served-feature log (off the request path, rotated, dropped records counted, joinable by request id)."""
from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from features.crossencoder import CrossEncoderScorer
from ltr import tracking as T
from ltr.serving.app import create_app
from ltr.serving.ce_batcher import CrossEncoderBatcher
from ltr.serving.config import ServedLogConfig
from ltr.serving.gate import FifoGate
from ltr.serving.served_log import ServedLog, read_served_log
from tests.fixtures.serving_world import build_world, request_body, wait_for

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    with T.using_tracking(f"sqlite:///{root}/mlflow.db", "phases"):
        yield build_world(root, "ltr-phases-test")
    mp.undo()


@pytest.fixture(scope="module")
def scorer(world):
    return CrossEncoderScorer(world["ce"])


def _pairs(world, n):
    prods = world["ds"].products
    texts = [f"{t} {i}" for i, t in enumerate(prods["title"].tolist()[:n])]
    return ["red backpack"] * n, texts


# --- the batcher -----------------------------------------------------------------------------------------

def test_batcher_scores_what_the_model_scores(world, scorer):
    qs, ts = _pairs(world, 20)
    b = CrossEncoderBatcher(lambda q, t: scorer.score(q, t), batch_size=8)
    try:
        job = b.submit(qs, ts, time.monotonic() + 60)
        got = b.wait(job)
    finally:
        b.close()
    assert np.allclose(got, scorer.score(qs, ts), atol=1e-5)
    assert b.stats["batches"] == 3 and b.stats["pairs"] == 20   # 8 + 8 + 4


def test_batches_draw_from_several_requests_earliest_deadline_first(world, scorer):
    seen: list[list[str]] = []
    gate = threading.Event()

    def score(q, t):
        gate.wait(10)                                        # the first batch waits until all jobs are queued
        seen.append(list(q))
        return scorer.score(q, t)

    b = CrossEncoderBatcher(score, batch_size=6)
    try:
        now = time.monotonic()
        first = b.submit(["warm-up"] * 2, ["a", "b"], now + 60)
        assert wait_for(lambda: first.inflight == 2, timeout=5)    # the model's thread holds it
        late = b.submit(["late"] * 4, ["a", "b", "c", "d"], now + 50)
        soon = b.submit(["soon"] * 4, ["a", "b", "c", "d"], now + 40)
        gate.set()
        for j in (first, late, soon):
            assert np.isfinite(b.wait(j)).all()
    finally:
        b.close()
    assert seen[0] == ["warm-up"] * 2
    assert seen[1] == ["soon"] * 4 + ["late"] * 2            # one batch, two requests, earliest deadline first
    assert seen[2] == ["late"] * 2


def test_deadline_cuts_work_off_and_leftovers_finish_when_idle(world, scorer):
    scored: list[int] = []

    def slow(q, t):
        time.sleep(0.05)                                     # 50 ms a batch
        return scorer.score(q, t)

    b = CrossEncoderBatcher(slow, batch_size=4, pair_seconds=0.0125, idle_seconds=0.05,
                            on_scored=lambda job, sl, s: scored.extend(range(sl.start, sl.stop)))
    try:
        qs, ts = _pairs(world, 16)
        t0 = time.monotonic()
        job = b.submit(qs, ts, t0 + 0.12)                     # time for about two batches of four
        got = b.wait(job)
        waited = time.monotonic() - t0
        assert waited < 0.5
        n = int(np.isfinite(got).sum())
        assert 1 <= n < 16 and np.isnan(got[n:]).all()      # best first: a scored prefix, the rest missing
        assert wait_for(lambda: sorted(scored) == list(range(16)), timeout=20)   # idle time finishes the rest
    finally:
        b.close()
    assert b.stats["expired_pairs"] > 0 and b.stats["backlog_pairs"] > 0


def test_leftovers_wait_while_a_request_is_in_flight(world, scorer):
    """A backlog batch started when a request arrives would take the cores its first phase needs."""
    scored: list[int] = []
    b = CrossEncoderBatcher(scorer.score, batch_size=4, pair_seconds=0.0125, idle_seconds=0.05,
                            on_scored=lambda job, sl, s: scored.extend(range(sl.start, sl.stop)))
    try:
        qs, ts = _pairs(world, 8)
        with b.foreground():
            b.wait(b.submit(qs, ts, time.monotonic() - 1))    # deadline already passed: all 8 left over
            time.sleep(0.3)
            assert scored == [] and b.pending()["backlog_pairs"] == 8
        assert wait_for(lambda: sorted(scored) == list(range(8)), timeout=20)  # the request done: idle again
    finally:
        b.close()


def test_calibration_measures_the_cost_per_pair(world, scorer):
    def slow(q, t):
        time.sleep(0.01 * len(t))                            # 10 ms a pair
        return scorer.score(q, t)

    b = CrossEncoderBatcher(slow, pair_seconds=5.0)       # a guess far off: calibration replaces it
    try:
        qs, ts = _pairs(world, 4)
        assert 0.009 < b.calibrate(qs, ts) < 1.0 and 0.009 < b.pair_seconds < 1.0
    finally:
        b.close()


def test_calibration_tells_a_pass_cost_from_a_pair_cost(world, scorer):
    def passes(q, t):
        time.sleep(0.06 + 0.01 * len(t))                     # 60 ms a pass + 10 ms a pair
        return scorer.score(q, t)

    b = CrossEncoderBatcher(passes, pair_seconds=5.0)
    try:
        qs, ts = _pairs(world, 8)
        b.calibrate(qs, ts)
        assert 0.04 < b.fixed_seconds < 0.1 and 0.006 < b.pair_seconds < 0.025   # not (60 + 10 x 8) / 8
    finally:
        b.close()


@pytest.mark.parametrize("fill,first", [(0.8, 8), (0.9, 9), (1.0, 10)])
def test_a_batch_is_sized_to_fill_a_share_of_the_time_left(world, scorer, fill, first):
    """A batch delivers its pairs all at once: one sized to the whole time left gives its request nothing if
    a slow moment makes it overrun, so by default it takes 90% of it and the rest go in the next batch."""
    gate = threading.Event()
    b = CrossEncoderBatcher(lambda q, t: (gate.wait(10), scorer.score(q, t))[1], batch_size=16,
                            pair_seconds=0.01, fill=fill)
    try:
        qs, ts = _pairs(world, 10)
        # 10 pairs of 10 ms fit only at fill 1; 109.5 ms leaves each fill ~9 ms for the thread to wake
        job = b.submit(qs, ts, time.monotonic() + 0.1095)
        assert wait_for(lambda: job.inflight > 0, timeout=5)
        assert job.inflight == first
    finally:
        gate.set()
        b.close()
    with pytest.raises(ValueError, match="fill"):
        CrossEncoderBatcher(scorer.score, fill=1.5)


def test_a_full_batcher_turns_work_away_instead_of_queueing(world, scorer):
    gate = threading.Event()
    b = CrossEncoderBatcher(lambda q, t: (gate.wait(10), scorer.score(q, t))[1], batch_size=2, max_jobs=2)
    try:
        now = time.monotonic()
        busy = b.submit(["a"] * 2, ["x", "y"], now + 30)
        assert wait_for(lambda: busy.inflight == 2, timeout=5)     # the model's thread holds it
        queued = b.submit(["b"] * 2, ["x", "y"], now + 30)
        refused = b.submit(["c"] * 2, ["x", "y"], now + 30)
        assert refused.done.is_set() and np.isnan(b.wait(refused)).all() and b.stats["rejected_jobs"] == 1
        gate.set()
        assert np.isfinite(b.wait(busy)).all() and np.isfinite(b.wait(queued)).all()
    finally:
        gate.set()
        b.close()


# --- the phases in the service ---------------------------------------------------------------------------

def test_phases_rerank_the_top_k_and_say_so(world):
    body = request_body(world, 2, n=12)
    full = create_app(world["uri"], world["feat"], bi_encoder=world["ce"], embedding_cache=None,
                      serving={"reload_poll_s": 0, "rerank_k": 12, "ce_deadline_ms": 60_000})
    phased = create_app(world["uri"], world["feat"], bi_encoder=world["ce"], embedding_cache=None,
                        serving={"reload_poll_s": 0, "rerank_k": 4, "ce_deadline_ms": 60_000})
    with TestClient(full) as c:
        ref = c.post("/v1/rank", json=body).json()
    with TestClient(phased) as c:
        got = c.post("/v1/rank", json=body).json()
    assert ref["ce_wanted"] == ref["ce_scored"] == 12 and all(x["phase"] == 2 for x in ref["results"])
    assert got["ce_wanted"] == got["ce_scored"] == 4
    phases = [x["phase"] for x in got["results"]]
    assert phases == [2] * 4 + [1] * 8                       # re-scored candidates first
    ref_score = {x["product_id"]: x["score"] for x in ref["results"]}
    top = got["results"][:4]
    assert [x["product_id"] for x in top] == sorted((x["product_id"] for x in top), key=lambda p: -ref_score[p])
    assert np.allclose([x["score"] for x in top], [ref_score[x["product_id"]] for x in top], atol=1e-6)


def test_a_missed_deadline_serves_the_first_phase(world):
    app = create_app(world["uri"], world["feat"], bi_encoder=world["ce"], embedding_cache=None,
                     serving={"reload_poll_s": 0, "rerank_k": 12, "ce_deadline_ms": 0.001})
    with TestClient(app) as c:
        r = c.post("/v1/rank", json=request_body(world, 3)).json()
    assert r["ce_wanted"] == 12 and r["ce_scored"] == 0 and not r["degraded"]
    assert all(x["phase"] == 1 for x in r["results"]) and len(r["results"]) == 12


# --- the served-feature log ------------------------------------------------------------------------------

def _record(i, feats=("f1", "f2"), n=3):
    return {"request_id": f"r{i}", "ts": pd.Timestamp.now(tz="UTC"), "query": "q", "query_id": "q_1",
            "product_ids": [f"P{k}" for k in range(n)], "features": list(feats),
            "X": np.full((n, len(feats)), i, float),
            "scores": np.arange(n, dtype=float), "phase": np.ones(n, np.int8), "position": np.arange(1, n + 1),
            "model_version": "1", "store": "ok"}


def test_served_log_rotates_by_records_and_by_time(tmp_path):
    log = ServedLog(tmp_path / "a", ServedLogConfig(part_records=2, part_seconds=300))
    for i in range(5):
        log.put(_record(i))
    log.close()
    assert log.parts == 3 and log.written_records == 5       # 2 + 2 + 1 (the last one on close)
    frame = read_served_log(tmp_path / "a")
    assert len(frame) == 15 and sorted(frame["request_id"].unique()) == [f"r{i}" for i in range(5)]
    timed = ServedLog(tmp_path / "b", ServedLogConfig(part_records=1000, part_seconds=0.2))
    timed.put(_record(0))
    assert wait_for(lambda: timed.parts == 1, timeout=10)    # closed by time, long before 1000 records
    timed.close()


def test_served_log_starts_a_part_for_another_feature_list(tmp_path):
    log = ServedLog(tmp_path, ServedLogConfig(part_records=100))
    log.put(_record(0, ("f1", "f2")))
    log.put(_record(1, ("f1", "f3")))                        # a reloaded model with other features
    log.close()
    frame = read_served_log(tmp_path)
    assert log.parts == 2 and {"f2", "f3"} <= set(frame.columns)


def test_served_log_drops_and_counts_instead_of_blocking(tmp_path):
    log = ServedLog(tmp_path, ServedLogConfig(queue_records=2, part_records=1))
    t0 = time.perf_counter()
    accepted = sum(log.put(_record(i, n=200)) for i in range(300))
    assert time.perf_counter() - t0 < 5                      # never waits for the disk
    log.close()
    assert log.dropped == 300 - accepted > 0 and log.written_records == accepted


def test_served_rows_join_later_engagement_by_request_id(world, tmp_path):
    app = create_app(world["uri"], world["feat"], bi_encoder=world["ce"], embedding_cache=None,
                     log_dir=tmp_path, serving={"reload_poll_s": 0, "log": {"part_records": 1}})
    with TestClient(app) as c:
        r = c.post("/v1/rank", json={**request_body(world, 0), "request_id": "shopper-42"}).json()
    served = read_served_log(tmp_path)
    clicked = r["results"][1]["product_id"]
    events = pd.DataFrame({"request_id": ["shopper-42"], "product_id": [clicked], "clicked": [True]})
    rows = served.merge(events, on=["request_id", "product_id"], how="left")
    hit = rows[rows["clicked"].eq(True)]
    assert len(hit) == 1 and hit["position"].iloc[0] == 2 and hit["model_version"].iloc[0] == "1"
    assert set(world["X"].columns) <= set(rows.columns)      # the model's features, as served


# --- the first-phase gate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("slots", [1, 2])
def test_the_gate_lets_requests_in_in_arrival_order_and_at_most_slots_at_once(slots):
    gate, entered, inside, most = FifoGate(slots), [], [0], [0]
    lock = threading.Lock()

    def request(i: int) -> None:
        with gate:
            with lock:
                entered.append(i)
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    holders = [gate.__enter__() for _ in range(slots)]   # every slot taken: arrivals must queue
    threads = []
    for i in range(6):
        t = threading.Thread(target=request, args=(i,))
        t.start()
        threads.append(t)
        assert wait_for(lambda n=i + 1: gate.waiting == n, timeout=5)   # arrived and queued before the next one
    for h in holders:
        h.__exit__(None, None, None)
    for t in threads:
        t.join(timeout=10)
    assert (entered if slots == 1 else sorted(entered)) == list(range(6))
    assert most[0] <= slots and gate.waiting == 0
    if slots == 2:   # in pairs: each of the first two began before any later one
        assert set(entered[:2]) == {0, 1}
