"""The interleaving benchmark (`bench/bench_interleaving.py`) in its --quick mode, end to end: the world's shoppers
against the team-drafted rankers, the JSON that docs/results.md would read, and figures that must hold whatever
the machine. The bounds are loose against what the quick run measured (seeded, so it repeats): large gap
interleaving and A/B power 1.0 at 400 searches, projected searches for 80% power 112 against 214, no false
positive for interleaving and one of four for the A/B on the identical pair."""
from __future__ import annotations

import json

import pytest

from bench.bench_interleaving import PAIRS, QUICK_N, main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_interleaving")
    main(["--quick", "--out", str(out)])
    return json.loads((out / "bench_interleaving.json").read_text())


def test_the_json_has_every_pair_size_and_seed_with_its_provenance(quick):
    r = quick
    assert r["benchmark"] == "interleaving" and r["quick"] is True and r["searches"] == QUICK_N
    assert {"commit", "date", "machine"} <= set(r) and r["seconds"] > 0 and r["peak_rss_mb"] > 0
    assert set(r["pairs"]) == set(PAIRS)
    assert len(r["runs"]) == len(PAIRS) * len(QUICK_N) * r["seeds"]
    for pair, p in r["pairs"].items():
        assert [row["searches"] for row in p["table"]] == QUICK_N
        for row in p["table"]:
            assert all(0.0 <= row[m] <= 1.0 for m in ("interleaving", "interleaving_rel_clicks", "ab")), row
        assert ("n_for_80pct_power" in p) is (pair != "identical")
    for name in {n for pair in PAIRS.values() for n in pair}:
        assert 1.0 < r["rankers"][name]["expected_clicks_per_search"]["by_volume"] < 4.0


def test_the_true_gaps_are_large_modest_and_none(quick):
    gap = {pair: p["true_gap"]["relative"] for pair, p in quick["pairs"].items()}
    assert gap["large gap"] > 0.10, gap          # 0.24 measured
    assert 0.01 < gap["modest gap"] < 0.06, gap  # 0.027 measured
    assert gap["identical"] == 0.0


def test_a_large_gap_is_found_and_identical_rankers_are_rarely_told_apart(quick):
    p = quick["pairs"]
    top = p["large gap"]["table"][-1]
    assert top["interleaving"] >= 0.75 and top["ab"] >= 0.75, top
    assert p["large gap"]["n_for_80pct_power"]["interleaving"] is not None
    for row in p["identical"]["table"]:
        assert row["interleaving"] <= 0.5 and row["ab"] <= 0.5, row  # 5% nominal; 3 of 4 seeds is p < 0.001
    proj = p["large gap"]["projected_n_for_80pct_power"]
    assert proj["interleaving"] < proj["ab"], proj  # each interleaved search judges both rankers
