"""The service's Prometheus metrics (`GET /metrics`), kept in this process's memory whatever the environment says.

Why not prometheus_client's Counter and Histogram: they store their values wherever `PROMETHEUS_MULTIPROC_DIR`
said when prometheus_client was imported, and importing Feast sets that variable (feast/metrics.py makes a
temp dir for its own feature server). Every counter then became a slot in an mmap file keyed by metric name,
read and written by every metric of that name in the process: a service made after another in one process
(tests; a blue/green pair) started from the other's counts, and both wrote the same slot. So the values are plain
numbers under one lock, exposed through a custom collector on a per-service registry (prometheus_client's
documented extension point); the exposition text is the same as before.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
CANDIDATE_BUCKETS = (1, 10, 25, 50, 100, 200, 500, 1000, 5000)
_REJECTED = {413: "body_too_large", 503: "overloaded"}  # any other rejection is a validation error (422)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a value on a bound falls in that bucket
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts):
            total += n
            cumulative.append((bound, total))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class ServiceMetrics:
    """What one service counts. Every update takes the lock: requests are served on a thread pool."""

    def __init__(self, ce_cache: Callable[[], Any], served_log: Callable[[], Any],
                 limits: Callable[[], Any]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, float] = {}      # by HTTP status
        self.errors: dict[str, float] = {}        # by kind
        self.ce_pairs = {"scored": 0.0, "missed": 0.0}
        self.store_errors = self.degraded = 0.0
        self.latency, self.candidates = _Histogram(LATENCY_BUCKETS), _Histogram(CANDIDATE_BUCKETS)
        self.model_info: dict[tuple[str, str], float] = {}
        self._ce_cache, self._served_log, self._limits = ce_cache, served_log, limits
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def show_model(self, name: str, version: str) -> None:
        with self._lock:
            self.model_info = {k: 0.0 for k in self.model_info}  # an old version: no longer live
            self.model_info[(name, version)] = 1.0

    def rejected(self, status: int = 422) -> None:
        with self._lock:
            _inc(self.errors, _REJECTED.get(status, "validation"))
            _inc(self.requests, str(status))

    def failed(self) -> None:
        with self._lock:
            _inc(self.errors, "internal")
            _inc(self.requests, "500")

    def served(self, seconds: float, n_candidates: int, ce_scored: int, ce_wanted: int, store_error: bool,
               degraded: bool) -> None:
        with self._lock:
            self.latency.observe(seconds)
            self.candidates.observe(n_candidates)
            _inc(self.requests, "200")
            self.ce_pairs["scored"] += ce_scored
            self.ce_pairs["missed"] += ce_wanted - ce_scored
            self.store_errors += store_error
            self.degraded += degraded

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Any]:
        """Called by the registry on every scrape: one consistent snapshot of the counts."""
        with self._lock:
            info = GaugeMetricFamily("ltr_model_info", "the live model", labels=["name", "version"])
            for labels, v in self.model_info.items():
                info.add_metric(list(labels), v)
            families = [
                _counter("ltr_rank_requests", "POST /v1/rank requests by HTTP status", "status", self.requests),
                _counter("ltr_rank_errors", "failed rank requests by kind", "kind", self.errors),
                self.latency.family("ltr_rank_latency_seconds", "POST /v1/rank latency (server side)"),
                self.candidates.family("ltr_rank_candidates", "candidates per rank request"),
                CounterMetricFamily("ltr_store_errors", "online store reads that failed (served without)",
                                    value=self.store_errors),
                CounterMetricFamily("ltr_rank_degraded", "responses served degraded", value=self.degraded),
                _counter("ltr_ce_pairs", "second-phase pairs by outcome", "outcome", self.ce_pairs),
                info]
        cache, log, limits = self._ce_cache(), self._served_log(), self._limits()
        families += [
            GaugeMetricFamily("ltr_ce_cache_hits", "cross-encoder cache hits", value=cache.hits),
            GaugeMetricFamily("ltr_ce_cache_misses", "cross-encoder cache misses", value=cache.misses),
            GaugeMetricFamily("ltr_ce_cache_size", "cross-encoder cache entries", value=len(cache)),
            GaugeMetricFamily("ltr_served_log_dropped", "served-log records dropped (writer behind)",
                              value=log.dropped if log else 0),
            GaugeMetricFamily("ltr_inflight", "rank requests in progress", value=limits.inflight if limits else 0)]
        return iter(families)


def _inc(counts: dict[str, float], key: str) -> None:
    counts[key] = counts.get(key, 0.0) + 1


def _counter(name: str, doc: str, label: str, counts: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in counts.items():
        family.add_metric([value], n)
    return family


__all__ = ["CANDIDATE_BUCKETS", "LATENCY_BUCKETS", "ServiceMetrics"]
