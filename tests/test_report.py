"""The short results table `ltr run` ends with (`ltr.report.summary_table`)."""
from __future__ import annotations

from typer.testing import CliRunner

from ltr.report import summary_rows, summary_table

SUMMARY = {  # the shape ltr.pipeline.run_all returns (and writes to reports/summary.json)
    "run_dir": "runs/default", "dataset": "runs/default/dataset", "cutoff": "2026-09-22 00:00:00+00:00",
    "engagement_simulated": True,
    "labels": {"n_pairs": 1200, "n_queries": 80, "accuracy": 0.4751, "kappa_quadratic": 0.5391, "spearman": 0.5874},
    "operating_point": {"alpha": 2.8012, "beta": 0.5941, "blend_weight": 0.4862},
    "test_metrics": {"ndcg@10": 0.93215, "ndcg_exp@10": 0.9511, "irrelevant@10": 0.0131,
                     "purchase_recall@10": 0.8093, "cart_recall@10": 0.7889, "ndcg@10/head": 0.9},
    "model_uri": "models:/ltr-ranker@champion", "model_version": "3", "mlflow_run_id": "0123456789abcdef0123",
    "experiments_claim": {"content_rel_gain": 0.5118, "engagement_rel_change": 0.1603, "met": True},
    "evaluate_esci": {"ndcg@10": 0.6651, "ndcg_exp@10": 0.7449, "irrelevant@10": 0.1149, "n_queries": 94},
    "timings_s": {"dataset": 2.0, "labels": 31.0, "cross_encoder": 420.4, "evaluate": 84.0, "tune": 9.0},
    "total_s": 610.2,
}


def test_summary_table_reads_as_a_table():
    got = summary_table(SUMMARY, json_path="runs/default/reports/summary.json")
    assert got.splitlines() == [
        "Results of runs/default",
        "-----------------------",
        "model             models:/ltr-ranker@champion (version 3, MLflow run 0123456789ab)",
        "operating point   alpha 2.80 | beta 0.594 | blend 0.486",
        "held-out queries  NDCG@10 0.932 | NDCG@10 exp 0.951 | Irrelevant@10 0.013 | purchase recall@10 0.809 | "
        "cart recall@10 0.789",
        "labels vs humans  accuracy 0.475 | quadratic kappa 0.539 | Spearman 0.587 on 80 held-out queries",
        "paper's claim     content +51.2%, engagement +16.0% -> met",
        "ESCI, never seen  NDCG@10 0.665 | NDCG@10 exp 0.745 | Irrelevant@10 0.115 (94 queries)",
        "engagement        simulated",
        "wall time         10 min 10 s (longest: cross_encoder 7 min 0 s, evaluate 1 min 24 s, labels 31 s)",
        "full results      runs/default/reports/summary.json",
    ]


def test_absent_parts_are_left_out_and_missing_numbers_say_so():
    s = {k: v for k, v in SUMMARY.items() if k not in ("experiments_claim", "evaluate_esci", "labels")}
    s["test_metrics"] = {"ndcg@10": float("nan"), "cart_recall@10": 0.5}
    s["engagement_source"] = "logged"
    rows = dict(summary_rows(s))
    assert "paper's claim" not in rows and "ESCI, never seen" not in rows and "labels vs humans" not in rows
    assert rows["held-out queries"] == "NDCG@10 n/a | cart recall@10 0.500"
    assert rows["engagement"] == "logged"
    assert summary_table({}).splitlines() == ["Results", "-------"]


def test_ltr_run_ends_with_the_table_not_a_json_dump(tmp_path, monkeypatch):
    """The CLI wiring only: the pipeline is replaced by its recorded summary (the stages have their own tests)."""
    import ltr.pipeline
    from ltr.cli import app

    monkeypatch.setattr(ltr.pipeline, "run_all", lambda cfg, out, skip_experiments=False: dict(SUMMARY))
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    tail = res.output.strip().splitlines()
    assert tail[-1] == f"full results      {tmp_path / 'run' / 'reports' / 'summary.json'}"
    assert "held-out queries  NDCG@10 0.932" in res.output
    assert '"test_metrics"' not in res.output and not res.output.lstrip().startswith("{")   # no JSON dump
