"""The service's /metrics counts its own requests only, even where prometheus_client is in multiprocess mode
(importing Feast turns it on: feast/metrics.py sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client's own
counters then share one mmap slot per metric name across the process: a service made after another started
from the other's counts)."""
from __future__ import annotations

import prometheus_client.values as prom_values
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ltr.serving.metrics import LATENCY_BUCKETS, ServiceMetrics


def _metrics() -> ServiceMetrics:
    cache = type("Cache", (), {"hits": 3, "misses": 4, "__len__": lambda self: 7})()
    return ServiceMetrics(ce_cache=lambda: cache, served_log=lambda: None, limits=lambda: None)


def _samples(m: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    text = m.render()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def multiprocess_mode(tmp_path, monkeypatch):  # noqa: PT004 - used for its effect
    """prometheus_client as a process that imported Feast first sees it."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(prom_values, "ValueClass", prom_values.get_value_class())


def test_two_services_in_one_process_count_apart(multiprocess_mode):
    assert prom_values.ValueClass is not prom_values.MutexValue   # the mode that made services share counts
    a = _metrics()
    for _ in range(3):
        a.served(0.004, 12, ce_scored=10, ce_wanted=10, store_error=True, degraded=True)
    a.rejected(413)
    b = _metrics()                                              # made after a counted
    b.served(0.004, 2, ce_scored=2, ce_wanted=2, store_error=False, degraded=False)
    sa, sb = _samples(a), _samples(b)
    assert sa[("ltr_rank_requests_total", (("status", "200"),))] == 3
    assert sa[("ltr_rank_requests_total", (("status", "413"),))] == 1
    assert sa[("ltr_rank_errors_total", (("kind", "body_too_large"),))] == 1
    assert sa[("ltr_store_errors_total", ())] == 3 and sa[("ltr_rank_degraded_total", ())] == 3
    assert sa[("ltr_ce_pairs_total", (("outcome", "scored"),))] == 30
    assert sb[("ltr_rank_requests_total", (("status", "200"),))] == 1
    assert ("ltr_rank_requests_total", (("status", "413"),)) not in sb
    assert sb[("ltr_store_errors_total", ())] == 0 and sb[("ltr_rank_latency_seconds_count", ())] == 1
    assert _samples(a)[("ltr_rank_requests_total", (("status", "200"),))] == 3


def test_histograms_gauges_and_model_info_read_as_prometheus_does():
    m = _metrics()
    for seconds in (0.001, 0.002, 0.03, 9.0):          # 0.002 sits on a bound: counted in that bucket (le)
        m.served(seconds, 40, ce_scored=8, ce_wanted=10, store_error=False, degraded=False)
    m.show_model("ranker", "1")
    m.show_model("ranker", "2")
    s = _samples(m)
    le = {b: s[("ltr_rank_latency_seconds_bucket", (("le", str(b)),))] for b in LATENCY_BUCKETS}
    assert le[0.002] == 2 and le[0.035] == 3 and le[5.0] == 3
    assert s[("ltr_rank_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert s[("ltr_rank_latency_seconds_count", ())] == 4
    assert s[("ltr_rank_latency_seconds_sum", ())] == pytest.approx(9.033)
    assert s[("ltr_rank_candidates_bucket", (("le", "50.0"),))] == 4
    assert s[("ltr_ce_pairs_total", (("outcome", "missed"),))] == 8
    assert s[("ltr_model_info", (("name", "ranker"), ("version", "1")))] == 0    # the old version: not live
    assert s[("ltr_model_info", (("name", "ranker"), ("version", "2")))] == 1
    assert (s[("ltr_ce_cache_hits", ())], s[("ltr_ce_cache_misses", ())], s[("ltr_ce_cache_size", ())]) == (3, 4, 7)
    assert s[("ltr_inflight", ())] == 0 and s[("ltr_served_log_dropped", ())] == 0
