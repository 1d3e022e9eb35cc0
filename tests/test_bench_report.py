"""docs/results.md's generator (bench/report.py): fake JSON in the shapes the benches and `ltr run` write, the
tables it makes from them, their commit / date / machine line, the "not measured" path and malformed JSON."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import report
from ltr.data.provenance import stamp

META = {"commit": "abc1234", "date": "2026-12-01",
        "machine": {"cores": 2, "ram_gb": 8.0, "cpu": "Test CPU 9000", "arch": "x86_64"}}
PROVENANCE = "*commit `abc1234` · 2026-12-01 · machine: 2 cores, 8.0 GiB RAM, Test CPU 9000 (x86_64)"


def _vs(diff: float, lo: float, hi: float) -> dict:
    return {"diff": diff, "ci95": [lo, hi], "n_queries": 300, "excludes_0": lo > 0 or hi < 0}


def _arm(name: str, ndcg: float, diff: float, lo: float, hi: float, **extra) -> dict:
    return {**extra, "arm": name, "ndcg@10": ndcg, "irrelevant@10": 0.066, "vs_bienc": _vs(diff, lo, hi)}


def _q(e: float) -> dict:
    return {"ndcg10_esci": e, "ndcg10_exp": e + 0.1, "irrelevant_at10": 0.12}


def _pb(d: float) -> dict:  # bench_twotower.paired_bootstrap
    return {"n_queries": 94, "mean_diff": d, "ci95": [d - 0.01, d + 0.01], "wins": 40, "losses": 30,
            "p_ttest": 0.3, "p_wilcoxon": 0.4}


LABEL_BUDGET = {
    "bench": "label_budget", **META, "dataset": "runs/homedepot/dataset", "run_dir": "runs/homedepot",
    "n_test_queries": 300, "n_train_queries": 900, "pilot_queries": 18, "split_seed": 7,
    "metric": "NDCG@10, ESCI gains, cold (engagement absent)", "engagement": "simulated",
    "arms": [_arm("(a) zero-shot bi-encoder", 0.8625, 0.0, 0.0, 0.0),
             _arm("(b) BM25 (title)", 0.8524, -0.0101, -0.0151, -0.0050)],
    "curves": {"by_seed_queries": [_arm("50 queries", 0.8588, -0.0037, -0.0078, 0.0006, seed_queries=50, seconds=2.0),
                                   _arm("8000 queries", 0.8616, -0.0009, -0.0043, 0.0024, seed_queries=8000)],
               "by_label_quality": [_arm("kappa 0.3", 0.8607, -0.0018, -0.006, 0.0026, target_kappa=0.3,
                                         measured_kappa=0.334, seed_queries=18)]},
    "seconds": 245.8}

BENCH_JSON = {
    "label_budget.json": LABEL_BUDGET,
    "recipe_cv.json": {"bench": "recipe_cv", **META, "folds": 4, "fold_seed": 11, "n_train_queries": 8095,
                       "metric": "NDCG@10, ESCI gains, cold, out of fold over training queries", "arms": [
                           {"arm": "+ title matches", "ndcg@10": 0.859,
                            "vs_bienc": {"diff": 0.0033, "ci95": [0.002, 0.0046], "excludes_0": True}}]},
    "bench_world.json": {"benchmark": "world", "cpu_count": 2, **META, "world": [
        {"seed": 7, "seconds": 3.21, "counts": {"products": 6000}, "spearman_grade_ctr": 0.45, "spearman_pairs": 9,
         "queries_top_clicked_irrelevant": 0.02, "irrelevant_share_top10_by_ctr": 0.11}],
        "esci_simulated_engagement": None},
    "bench_train.json": {"benchmark": "bench_train", "rows": 1_000_000, "features": 40, "trees": 300, "threads": 2,
                         "fit_s": 97.25, "fit_cpu_s": 190.1, "predict_100k_s": 0.321, "goal_fit_s": 120,
                         "meets_goal": True, **META},
    "bench_feast.json": {"rows": 200_000, "features_per_row": 14, "cpus": 2, **META, "backends": {
        "sqlite": {"feast_materialize": {"seconds": 49.7, "rows_per_s": 4024},
                   "bulk_materialize": {"seconds": 8.5, "rows_per_s": 23471}, "speedup": 5.8,
                   "identical_online_reads": True, "online_read": {"p50_ms": 2.9, "p99_ms": 7.3, "mean_ms": 3.1}},
        "redis": {"skipped": "redis-server not installed"}}},
    "crossencoder_speed.json": {"benchmark": "crossencoder_speed", "n_pairs": 4135, "model": "fresh-head MiniLM (cls)",
                                "compared": "sigmoid", "max_length": 64, "threads": 2, "rounds": 2, **META,
                                "methods": {"onnx-int8": {"pairs_per_s": 302.8, "speedup_vs_st": 2.23,
                                                          "max_abs_diff_vs_st": 0.012, "spearman_vs_st_fp32": 0.995}}},
    "bench_labeler.json": {"latency_s": 0.05, "concurrency_1": {"concurrency": 1, "pairs": 20, "seconds": 2.0,
                                                                 "pairs_per_s": 9.8},
                           "concurrency_16": {"concurrency": 16, "pairs": 160, "seconds": 1.36, "pairs_per_s": 117.8},
                           "speedup": 12.02, "goal_speedup": 10.0, "meets_goal": True, **META},
    "bench_grader.json": {"benchmark": "grader_vs_zero_shot_heldout_esci", "test_frac": 0.3, "seeds": [0, 1], **META,
                          "mean": {"zero_shot": {"kappa": 0.31, "spearman": 0.35, "accuracy": 0.4},
                                   "fine_tuned": {"kappa": 0.42, "spearman": 0.44, "accuracy": 0.5}},
                          "fine_tuned_beats_zero_shot_on_mean": True, "splits_won": 1, "splits": [{}, {}]},
    "bench_grader_pipeline.json": {"benchmark": "grader_pipeline", "seconds": 47.9, "n_pairs": 20000,
                                   "pairs_per_second": 417.5, "grader_fit_seconds": 12.5, "n_train_pairs": 1600,
                                   "calibration_heldout": {"accuracy": 0.61, "kappa_quadratic": 0.55}, **META},
    "ce_quality.json": {"benchmark": "ce_quality", "n_queries": 94, "folds": 3, **META, "scored_queries": 94,
                        "rankers": {"bienc_cos_ce_text": _q(0.650), "cross_encoder_finetuned_oof": _q(0.661)},
                        "ce_minus_bienc_ce_text": {"n_queries": 94, "mean_diff": 0.011, "ci95": [-0.027, 0.046],
                                                   "p_boot_le_0": 0.28, "wins": 40, "losses": 35, "ties": 19}},
    "ce_transfer.json": {"benchmark": "ce_transfer", "skipped": "no cross-encoder dirs: pass --models", **META},
    "bench_dask.json": {"benchmark": "bench_dask", "rows": 5_000_000, "features": 40, "trees": 300, "workers": 2,
                        **META, "local": {"fit_s": 482.0, "fit_cpu_s": 950.0, "ndcg@10_heldout": 0.7657,
                                          "peak_rss_mb": 3600, "load_avg_1m_mean": 1.2},
                        "dask": {"fit_s": 507.0, "fit_cpu_s": 1007.0, "ndcg@10_heldout": 0.7601, "peak_rss_mb": 4700,
                                 "worker_peak_rss_mb": {"1": 1700, "2": 1701}, "load_avg_1m_mean": 1.9},
                        "complete": True, "wall_ratio_dask_over_local": 1.052, "ndcg_diff_dask_minus_local": -0.0056},
    "bench_encoders.json": {"benchmark": "bench_encoders", "pairs": 384, "torch_threads": 2, **META,
                            "bienc": {"max_length": 128, "texts_per_s": 30.1, "texts_per_cpu_s": 16.1},
                            "cross_encoder": {"max_length": 64, "backend": "torch fp32", "pairs_per_s": 50.2,
                                              "pairs_per_cpu_s": 27.6}, "peak_rss_mb": 962},
    "bench_retrieval.json": {"dataset": "esci", "products": 4095, "queries": 94, "k": 50, "top": 10, **META,
                             "retrieve_seconds": 686.0,
                             "recall_exact": {"bm25": 0.833, "bienc": 0.834, "union": 0.915, "n_pairs": 1500},
                             "recall_exact_or_substitute": {"bm25": 0.7, "bienc": 0.72, "union": 0.8, "n_pairs": 2500},
                             "levels": {"easy": {"pairs": 900, "judged": 300, "mean_grade": 2.5, "exact_share": 0.7,
                                                 "irrelevant_share": 0.05}},
                             "exact_topk_ms_per_query_1_thread": {"100000": 4.6}},
    "twotower.json": {"benchmark": "twotower", "budget_per_fold": 1600, "folds": 3, **META, "datasets": {"esci": {
        "means": {"zero_shot": {"ndcg@10": 0.64, "irrelevant@10": 0.11, "n_queries": 94.0},
                  "curriculum": {"ndcg@10": 0.638, "irrelevant@10": 0.111, "n_queries": 94.0}},
        "comparisons": {"curriculum-zero_shot": {"ndcg@10": _pb(-0.002), "irrelevant@10": _pb(0.001)}},
        "run": {"argv": [], "commit": "0ld0ld0", "date": "2026-11-20"}}}},
    "bench_cold_route_esci16.json": {"benchmark": "bench_cold_route", "run_dir": "runs/esci16", "dev": False,
                                     "queries": 94, **META, "metric": "ndcg@10 (ESCI gains)",
                                     "mean_ndcg@10": {"trees": 0.583, "bienc_zero_shot": 0.636},
                                     "paired": {"trees - bienc_zero_shot": {"mean": -0.053, "sd_over_splits": 0.02,
                                                                            "share_of_splits_ge_0": 0.05}},
                                     "splits": [{}, {}, {}]},
    "bench_scale.json": {"benchmark": "scale", "cpu_count": 2, **META, "runs": [
        {"series": "world", "scale": 1, "stage": "engagement", "wall_s": 2.1, "cpu_s": 2.0, "peak_rss_mb": 540.0},
        {"series": "sessions", "scale": 1, "impressions": 16_000_000, "stage": "engagement", "wall_s": 6.2,
         "cpu_s": 6.1, "peak_rss_mb": 645.0},
        {"series": "world", "scale": 16, "stage": "labels", "projected": True, "wall_s": 1186.0}],
        "exponents": {"engagement": {"world": {"cpu_s": 0.85}, "sessions": {"cpu_s": 0.78}}},
        "goals": {"engagement_16M": {"impressions": 16_000_000, "measured": {"wall_s": 6.2}, "goal": {"wall_s": 20.0},
                                     "met": True}}},
    "bench_serving.json": {"benchmark": "ranking service", "n_candidates": 100, "catalog_products": 4095,
                           "held_out_queries": 31, **META, "cpu_steal_share": 0.013,
                           "current": {"startup_s": 23.5, "new_query": {"p50_ms": 60.0, "p99_ms": 140.2},
                                       "warm": {"p50_ms": 4.4, "p99_ms": 6.8},
                                       "concurrency8": {"requests_per_s": 200.5, "p99_ms": 60.1}},
                           "quality": {"gap": 0.0061},
                           "goals_met": {"ndcg_gap<=0.005": False, "warm_p50_ms<=10": True}},
}

SUMMARY = {"run_dir": "runs/x", "engagement_source": "simulated (lexical overlap)", **META,
           "labels": {"n_pairs": 4800, "accuracy": 0.429, "kappa_quadratic": 0.363, "spearman": 0.398,
                      "scope": "held-out"},
           "test_metrics": {"ndcg@10": 0.8523, "ndcg@10/head": 0.8032, "ndcg@10/tail": 0.8645, "ndcg@10/cold": 0.8608,
                            "irrelevant@10": 0.0666, "n_queries": 270.0},
           "cold_start": {"champion_warm": 0.8523, "champion_cold": 0.8608, "content_only": 0.8630, "metric": "ndcg@10",
                          "bienc_zero_shot": 0.8625, "zero_shot_rule_met": False, "cold_rule_met": False}}
EXPERIMENTS = {"seeds": [0, 1, 2], "content_metric": "ndcg@10", "engagement_metric": "cart_recall@10",
               "irrelevant_metric": "irrelevant@10",
               "arms": [{"name": "engagement only", "group": "a", "mean": {"ndcg@10": 0.8469, "cart_recall@10": 0.99},
                         "std": {"ndcg@10": 0.0064, "cart_recall@10": 0.0006}}],
               "claim": {"statement": "content >= +5%", "content_rel_gain": 0.0026, "engagement_rel_change": 0.0002,
                         "met": False, "content_p_ttest": 0.316, "engagement_p_ttest": 0.688}}
EVALUATE = {"dataset": "/data/esci", "k": 10, "ndcg@10": 0.6434, "ndcg_exp@10": 0.7262, "irrelevant@10": 0.1181,
            "n_queries": 94, "engagement": "absent",
            "bienc_zero_shot": {"ndcg@10": 0.6365, "irrelevant@10": 0.1085,
                                "model_vs_bienc": {"diff": 0.0069, "ci95": [-0.0193, 0.0334], "n_queries": 94,
                                                   "excludes_0": False}}}


def _write(d: Path, name: str, obj) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _run(tmp_path: Path, capsys=None) -> tuple[int, str]:
    out = tmp_path / "docs" / "results.md"
    rc = report.main(["--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--out", str(out)])
    return rc, out.read_text() if out.exists() else ""


def _section(page: str, title: str) -> str:
    """The page's text from `## title` to the next `## ` heading."""
    start = page.index(f"## {title}\n")
    end = page.find("\n## ", start + 3)
    return page[start:] if end < 0 else page[start:end]


def test_every_bench_table_is_made_with_its_commit_date_and_machine(tmp_path):
    for name, obj in BENCH_JSON.items():
        _write(tmp_path / "results", name, obj)
    rc, page = _run(tmp_path)
    assert rc == 0
    for b in report.BENCHES:
        sec = _section(page, b.title)
        assert PROVENANCE in sec, b.title
        assert "not measured yet" not in sec and "| --- |" not in sec
    expect = {"World generation": "| 7 | 3.21 | 0.450 |", "LambdaMART training": "| 97.25 | 190.10 |",
              "Feast materialize and online reads": "skipped: redis-server not installed",
              "Cross-encoder inference speed": "| onnx-int8 | 302.8 | 2.23x |",
              "Labeler throughput": "Speedup 12.02x (goal >= 10.0x): **met**",
              "Training on Dask": "| dask | 507.0 | 1,007.0 | 0.7601 | 4,700 | 1,700 + 1,701 |",
              "Cross-encoder quality, held-out ESCI": "+0.0110, 95% CI [-0.0270, +0.0460]",
              "Cross-encoder transfer to ESCI": "Skipped: no cross-encoder dirs",
              "Retrieval and mining": "| union | 0.915 | 0.800 |",
              "Two-tower fine-tuning with a curriculum": "| esci | curriculum-zero_shot | -0.002 [-0.012, +0.008] |",
              "Cold route over many splits": "| trees | 0.5830 | -0.0530 | 0.050 |",
              "Scale of the data stages": "| engagement | 2.1 / 2.0 s, 0.53 GB |  | 6.2 / 6.1 s, 0.63 GB | "
                                          "0.85; 0.78 |",
              "Ranking service over HTTP": "| ndcg_gap<=0.005 | **not met** |",
              "Home Depot recipe, cross-validated on training queries":
                  "| + title matches | 0.8590 | +0.0033 | [+0.0020, +0.0046] | yes |"}
    for title, row in expect.items():
        assert row in _section(page, title), (title, row)
    assert "*1,186 s*" in _section(page, "Scale of the data stages")  # projected, in italics
    assert "esci: measured at commit `0ld0ld0`, 2026-11-20" in page  # a dataset kept from an earlier run


def test_label_budget_arms_and_both_curves_keep_negative_results(tmp_path):
    _write(tmp_path / "results", "label_budget.json", LABEL_BUDGET)
    rc, page = _run(tmp_path)
    sec = _section(page, report.BENCHES[0].title)
    assert rc == 0 and PROVENANCE in sec
    assert "| (b) BM25 (title) | 0.8524 | 0.0660 | -0.0101 | [-0.0151, -0.0050] | yes |" in sec
    assert "| (a) zero-shot bi-encoder | 0.8625 | 0.0660 | +0.0000 | [+0.0000, +0.0000] | no |" in sec
    assert "| 8,000 | 0.8616 | 0.0660 | -0.0009 | [-0.0043, +0.0024] | no |" in sec
    assert "| 0.30 | 0.334 | 18 | 0.8607 |" in sec
    assert "300 test queries, 900 training queries, 18 pilot queries" in sec


def test_missing_json_says_which_command_measures_it(tmp_path):
    rc, page = _run(tmp_path)
    assert rc == 0
    res = tmp_path / "results"
    assert f"not measured yet: run `python -m bench.bench_world --out {res}`" in page
    assert (f"not measured yet: run `python -m bench.bench_label_budget --out {res} --run-dir runs/homedepot "
            "--config configs/homedepot.yaml --png docs/label_budget.png`") in page
    assert page.count("not measured yet") == len(report.BENCHES) + 1 + 2  # + `make bench` index + 2 runs
    assert "*commit" not in page  # nothing measured, so no provenance line


def test_older_json_without_meta_says_what_is_not_recorded(tmp_path):
    legacy = {k: v for k, v in BENCH_JSON["bench_world.json"].items() if k not in META}
    _write(tmp_path / "results", "bench_world.json", legacy)
    rc, page = _run(tmp_path)
    sec = _section(page, "World generation")
    assert rc == 0
    assert "*commit not recorded · date not recorded (file written 20" in sec
    assert "machine: 2 cores, RAM not recorded, CPU model not recorded" in sec


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["arms"][1]["vs_bienc"].pop("ci95"), "label_budget.json.arms[1].vs_bienc: field 'ci95' is missing"),
    (lambda d: d["curves"].pop("by_label_quality"), "label_budget.json.curves: field 'by_label_quality' is missing"),
    (lambda d: d["arms"][0].update({"ndcg@10": "high"}), "a field has an unexpected type (expected a number"),
])
def test_malformed_json_names_the_field_and_the_fix_and_writes_nothing(tmp_path, capsys, breakage, message):
    bad = copy.deepcopy(LABEL_BUDGET)
    breakage(bad)
    _write(tmp_path / "results", "label_budget.json", bad)
    rc, page = _run(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and page == ""
    assert message in err
    assert "Fix: run `python -m bench.bench_label_budget --out" in err


def test_unreadable_json_is_reported_not_raised(tmp_path, capsys):
    _write(tmp_path / "results", "bench_train.json", '{"rows": 1,')
    _write(tmp_path / "results", "bench_labeler.json", "[1, 2]")
    rc, _ = _run(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2
    assert "bench_train.json: not valid JSON" in err and "bench_labeler.json: expected a JSON object" in err


def test_run_reports_become_tables(tmp_path):
    rep = tmp_path / "runs" / "homedepot" / "reports"
    _write(rep, "summary.json", SUMMARY)
    _write(rep, "experiments.json", EXPERIMENTS)
    _write(rep, "evaluate_esci.json", EVALUATE)
    rc, page = _run(tmp_path)
    sec = _section(page, f"Run `{tmp_path / 'runs' / 'homedepot'}`")
    assert rc == 0 and sec.count(PROVENANCE) == 3  # summary.json's three tables (it carries the provenance keys)
    assert sec.count("*commit not recorded · date not recorded (file written ") == 2  # experiments, evaluate
    assert "| ndcg@10 | 0.8523 | 0.8032 | 0.8645 | 0.8608 |" in sec
    assert "Champion cold >= zero-shot bi-encoder: **not met**" in sec
    assert "| engagement only | a | 0.8469 ± 0.0064 | n/a ± n/a | 0.9900 ± 0.0006 |" in sec
    assert "content +0.26% (p t-test 0.316), engagement +0.02% (p t-test 0.688): **not met**" in sec
    assert "| 94 | 0.6434 | 0.7262 | 0.1181 | 0.6365 | +0.0069 [-0.0193, +0.0334] |" in sec
    assert "not measured yet" not in sec
    assert f"## Run `{tmp_path / 'runs' / 'default'}`\n\nnot measured yet: run `ltr run --config" in page


def test_meta_records_commit_date_and_machine():
    m = stamp()
    assert set(m) == {"commit", "date", "machine"} and len(m["date"]) == 10
    assert isinstance(m["machine"]["cores"], int) and m["machine"]["cores"] >= 1
    assert m["commit"] == "unknown" or len(m["commit"].split("+")[0]) >= 7
    assert report.machine_text(m["machine"]).startswith(f"{m['machine']['cores']} cores")
