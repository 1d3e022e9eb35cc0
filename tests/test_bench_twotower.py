"""The two-tower benchmark's statistics and report: paired differences per segment, and a run on one
dataset keeping the other's figures (`bench/bench_twotower.py`). Synthetic per-query tables: no model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bench.bench_twotower import markdown, merged, paired_bootstrap, summarize


def _pq(shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 40
    return pd.DataFrame({"ndcg@10": rng.uniform(0.4, 0.8, n) + shift, "ndcg_exp@10": rng.uniform(0.4, 0.8, n),
                         "irrelevant@10": rng.uniform(0, 0.2, n), "recall@50": rng.uniform(0.6, 1, n),
                         "segment": np.where(np.arange(n) < 10, "head", "tail")},
                        index=[f"q{i}" for i in range(n)])


def test_paired_bootstrap_finds_a_constant_gain_and_only_paired_queries():
    a = pd.Series([0.5, 0.6, 0.7, 0.8], index=list("abcd"))
    b = pd.Series([0.4, 0.5, 0.6, 0.9], index=list("abce"))  # 'd' and 'e' have no partner
    r = paired_bootstrap(a, b, n_boot=500)
    assert r["n_queries"] == 3 and abs(r["mean_diff"] - 0.1) < 1e-9 and r["ci95"][0] > 0.09
    assert paired_bootstrap(a, b.rename(index=str.upper))["n_queries"] == 0


def test_summarize_compares_every_metric_by_segment_and_markdown_shows_them():
    zero = _pq(0.0, 1)
    res = summarize({"zero_shot": zero, "curriculum": zero.assign(**{"ndcg@10": zero["ndcg@10"] + 0.05})})
    comp = res["comparisons"]["curriculum-zero_shot"]
    assert abs(comp["ndcg@10"]["mean_diff"] - 0.05) < 1e-9 and comp["ndcg@10"]["ci95"][0] > 0.04
    assert comp["ndcg@10/head"]["n_queries"] == 10 and comp["irrelevant@10/tail"]["mean_diff"] == 0
    md = markdown({"datasets": {"esci": res}})
    assert "| esci | curriculum-zero_shot | head | 10 | +0.050 (+0.050, +0.050) | +0.000" in md


def test_merged_keeps_the_other_dataset_and_its_run(tmp_path):
    path = tmp_path / "twotower.json"
    path.write_text(json.dumps({"config": {"lr": 1}, "host": {"cpus": 2}, "seconds_this_run": 9.0,
                                "datasets": {"world": {"means": {"x": 1}}, "esci": {"means": {"old": 1}}}}))
    res = merged({"config": {"lr": 2}, "datasets": {"esci": {"means": {"new": 1}}}}, path)
    assert list(res["datasets"]) == ["esci", "world"]
    assert res["datasets"]["esci"]["means"] == {"new": 1}
    assert res["datasets"]["world"]["run"] == {"config": {"lr": 1}, "host": {"cpus": 2}, "seconds_this_run": 9.0}
    path.write_text("{not json")
    assert merged({"datasets": {}}, path) == {"datasets": {}}
