"""Cross-encoder work of many requests, batched by one thread under each request's deadline.

Why: a cross-encoder forward pass costs 4 to 15 ms a pair on these 2 cores (int8 or fp32, by CPU) and
already uses both, so requests that score one at a time behind a lock queue up behind each other. Here one
thread owns the model. A request hands it its pairs in priority order (the first phase's best first) with a
deadline; the thread fills each batch from the jobs whose deadlines come first (earliest deadline first),
sized by the measured cost per pair to fill `fill` of the time left before the earliest deadline (a batch
delivers all its pairs at once, so one that overruns gives its request none; the pairs left go in the next
batch, if it still fits). When its
deadline passes a request takes what was scored; the rest stays missing and the response says how many
were scored. The pairs a request ran out of time for are not dropped: they wait in a bounded backlog that
the thread works through, ~`idle_seconds` of pairs at a time, only once no request has been in flight for
`idle_after_s` (`foreground`): a backlog batch running when a request arrives would take the cores its
first phase needs and hold the model past its deadline. Every score goes to `on_scored` (the service's
cache), so the next request for the same query finds them scored.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class CEJob:
    """One request's pairs; `scores` fills in as batches finish (NaN = not scored)."""

    __slots__ = ("queries", "texts", "tag", "deadline", "scores", "next", "inflight", "cancelled", "done")

    def __init__(self, queries: Sequence[str], texts: Sequence[str], deadline: float, tag: Any = None) -> None:
        self.queries, self.texts, self.tag, self.deadline = list(queries), list(texts), tag, deadline
        self.scores = np.full(len(self.texts), np.nan)
        self.next = 0          # first pair not yet handed to a batch
        self.inflight = 0      # pairs in the batch being scored
        self.cancelled = False
        self.done = threading.Event()

    def left(self) -> int:
        return len(self.texts) - self.next


class CrossEncoderBatcher:
    """score(queries, texts) -> scores, run by one thread over batches drawn from many requests.

    batch_size: most pairs per forward pass. max_jobs: requests waiting at once; beyond it a request gets
    no cross-encoder work (served from the first phase) instead of waiting: the bound on load in front of
    the model. pair_seconds: first guess of the cost per pair, then a running average of measured batches.
    fill: the share of the time left before the earliest deadline a batch is sized to take. At 1.0 a new
    query's 10 pairs went in one batch sized to end just before its 130 ms deadline, and when the machine
    was slower for a moment it ended at 137-140 ms: 3 of 31 requests got none of their 10 pairs
    (`bench/bench_serving.py`'s held-out queries). Two probe runs of those 31 queries each, interleaved:
    fill 1.0 scored 308 and 294 of 310 pairs in time (one request with none), 0.9 306 and 310, 0.8 308
    and 268 (in a slow run its second batch did not fit either). At 0.9 a slow moment costs the last pair,
    not all ten; one more pass costs ~2 ms.
    """

    def __init__(self, score: Callable[[list[str], list[str]], np.ndarray], batch_size: int = 32,
                 max_jobs: int = 64, pair_seconds: float = 0.002,
                 on_scored: Callable[[CEJob, slice, np.ndarray], None] | None = None,
                 max_backlog: int = 256, idle_seconds: float = 0.02, idle_after_s: float = 0.05,
                 fill: float = 0.9) -> None:
        if batch_size < 1 or max_jobs < 1 or pair_seconds <= 0 or not 0 < fill <= 1:
            raise ValueError("batch_size and max_jobs must be >= 1, pair_seconds > 0 and 0 < fill <= 1")
        self._score, self._on_scored = score, on_scored
        self.batch_size, self.max_jobs, self.pair_seconds, self.fill = batch_size, max_jobs, pair_seconds, fill
        self.fixed_seconds = 0.0  # a pass's cost beyond its pairs (set by calibrate)
        self._jobs: list[CEJob] = []
        self._backlog: deque[CEJob] = deque()
        self.max_backlog, self.idle_seconds, self.idle_after_s = max_backlog, idle_seconds, idle_after_s
        self._last_fg = 0.0  # when the last request in flight finished (time.monotonic())
        self._cv = threading.Condition()
        self._closed = False
        self._foreground = 0  # requests in flight: the backlog waits while any is
        self.stats = {"batches": 0, "pairs": 0, "rejected_jobs": 0, "expired_pairs": 0, "backlog_pairs": 0,
                      "errors": 0}
        self._thread = threading.Thread(target=self._run, name="ce-batcher", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------------------------
    def submit(self, queries: Sequence[str], texts: Sequence[str], deadline: float, tag: Any = None) -> CEJob:
        """Queue pairs (best first) to be scored before `deadline` (time.monotonic())."""
        job = CEJob(queries, texts, deadline, tag)
        with self._cv:
            if not job.texts or self._closed or len(self._jobs) >= self.max_jobs:
                if job.texts:
                    self.stats["rejected_jobs"] += 1
                job.done.set()
                return job
            self._jobs.append(job)
            self._cv.notify()
        return job

    def calibrate(self, queries: Sequence[str], texts: Sequence[str]) -> float:
        """Measure a batch's cost on real pairs before serving, so the first requests' batches are sized to
        their deadlines and not to a guess: after a warm-up pass, one pair and all of them (best of three
        each) give the cost of a pass (`fixed_seconds`, ~6 ms in int8 on 2 cores) and of each pair in it
        (`pair_seconds`). Without the fixed part, small batches would read as dear pairs and shrink every
        later batch."""
        qs, ts = list(queries), list(texts)
        self._score(qs, ts)

        def timed(n: int) -> float:  # the fastest of three: a pass the machine did not interrupt
            runs = []
            for _ in range(3):
                t0 = time.monotonic()
                self._score(qs[:n], ts[:n])
                runs.append(time.monotonic() - t0)
            return min(runs)

        one, every = timed(1), timed(len(ts))
        with self._cv:
            if len(ts) > 1:
                self.pair_seconds = max(1e-5, (every - one) / (len(ts) - 1))
                self.fixed_seconds = min(max(0.0, one - self.pair_seconds), every / 2)
            else:
                self.pair_seconds, self.fixed_seconds = max(1e-5, every), 0.0
            return self.pair_seconds

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Around a request's whole ranking: no backlog batch starts while one is in flight."""
        with self._cv:
            self._foreground += 1
        try:
            yield
        finally:
            with self._cv:
                self._foreground -= 1
                self._last_fg = time.monotonic()
                self._cv.notify()

    def wait(self, job: CEJob) -> np.ndarray:
        """The job's scores once all are in or its deadline passed, whichever comes first."""
        job.done.wait(max(0.0, job.deadline - time.monotonic()))
        with self._cv:
            job.cancelled = True
            return job.scores.copy()

    def pending(self) -> dict[str, int]:
        """Requests waiting and leftover pairs not yet scored (what /health shows)."""
        with self._cv:
            return {"jobs": len(self._jobs), "backlog_pairs": sum(j.left() for j in self._backlog)}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    # -- the model's thread -------------------------------------------------------------------------------
    def _take(self) -> list[tuple[CEJob, int, int]]:
        """Under the lock: retire finished, cancelled and hopeless jobs; then the next batch, EDF order."""
        now, keep, scoring = time.monotonic(), [], []
        for j in self._jobs:
            if not (j.cancelled or j.left() == 0 or j.deadline <= now + self.fixed_seconds + self.pair_seconds):
                keep.append(j)
            elif j.inflight:
                scoring.append(j)  # retired once its batch is delivered
            else:
                self._retire(j)
        self._jobs = keep + scoring
        keep.sort(key=lambda j: j.deadline)
        if not keep:
            return self._idle_batch()
        left = self.fill * (keep[0].deadline - now) - self.fixed_seconds
        room = min(self.batch_size, max(1, int(left / self.pair_seconds)))
        batch = []
        for j in keep:
            n = min(room, j.left())
            batch.append((j, j.next, j.next + n))
            j.next += n
            j.inflight += n
            room -= n
            if room == 0:
                break
        return batch

    def _retire(self, j: CEJob) -> None:
        j.done.set()
        if j.left():
            self.stats["expired_pairs"] += j.left()
            if len(self._backlog) < self.max_backlog:
                self._backlog.append(j)

    def _idle_batch(self) -> list[tuple[CEJob, int, int]]:
        """Nobody in flight: leftover pairs worth about `idle_seconds` (one pair at least), so a request
        arriving now waits little. Sized by time, not count: 8 pairs were ~70 ms on an AVX2 CPU, and every
        request of a sequential client arrived behind such a batch and missed its deadline."""
        while self._backlog and not self._backlog[0].left():
            self._backlog.popleft()
        if not self._backlog or self._quiet_in() > 0:
            return []
        j = self._backlog[0]
        n = min(j.left(), max(1, int((self.idle_seconds - self.fixed_seconds) / self.pair_seconds)))
        j.next += n
        j.inflight += n
        self.stats["backlog_pairs"] += n
        return [(j, j.next - n, j.next)]

    def _deliver(self, batch: list[tuple[CEJob, int, int]], vals: np.ndarray, seconds: float) -> None:
        n = sum(b - a for _, a, b in batch)
        with self._cv:
            if np.isfinite(vals).all():
                per = max(1e-5, (seconds - self.fixed_seconds) / n)
                self.pair_seconds = 0.8 * self.pair_seconds + 0.2 * per
            self.stats["batches"] += 1
            self.stats["pairs"] += n
            k = 0
            for j, a, b in batch:
                j.scores[a:b] = vals[k:k + b - a]
                j.inflight -= b - a
                k += b - a
                if j.inflight == 0 and (j.left() == 0 or j.cancelled):
                    j.done.set()
        for j, a, b in batch:
            if self._on_scored is not None:
                try:
                    self._on_scored(j, slice(a, b), j.scores[a:b])
                except Exception:  # noqa: BLE001 - a cache hiccup must not stop the model's thread
                    log.exception("cross-encoder on_scored hook failed")

    def _quiet_in(self) -> float:
        """Seconds until leftovers may run (under the lock): none in flight, none for `idle_after_s`. A client
        that sends requests back to back leaves gaps of a millisecond; a leftover batch started in one takes
        the cross-encoder from the next request."""
        if self._foreground:
            return float("inf")
        return self._last_fg + self.idle_after_s - time.monotonic()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._jobs:
                    wait = self._quiet_in() if self._backlog else None
                    if wait is not None and wait <= 0:
                        break
                    self._cv.wait(None if wait is None or wait == float("inf") else wait)
                if self._closed:
                    for j in self._jobs:
                        j.done.set()
                    return
                batch = self._take()
            if not batch:
                continue
            qs = [j.queries[i] for j, a, b in batch for i in range(a, b)]
            ts = [j.texts[i] for j, a, b in batch for i in range(a, b)]
            t0 = time.monotonic()
            try:
                vals = np.asarray(self._score(qs, ts), dtype=np.float64).reshape(-1)
            except Exception:  # noqa: BLE001 - the pairs stay unscored; the requests are served without them
                log.exception("cross-encoder batch failed")
                self.stats["errors"] += 1
                vals = np.full(len(ts), np.nan)
            self._deliver(batch, vals, time.monotonic() - t0)


__all__ = ["CEJob", "CrossEncoderBatcher"]
