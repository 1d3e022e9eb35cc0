"""The main job's results as a short table for a person (`ltr run` prints it last).

The JSON summary (`reports/summary.json`) stays the record a program reads; a person finishing
`make run` wants the handful of numbers that say whether the run worked, where the model went and where
the rest is, without scrolling through a JSON dump. Every row is optional: a run without experiments or
without the ESCI evaluation simply has fewer rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_HELDOUT = (("ndcg@10", "NDCG@10"), ("ndcg_exp@10", "NDCG@10 exp"), ("irrelevant@10", "Irrelevant@10"),
            ("purchase_recall@10", "purchase recall@10"), ("cart_recall@10", "cart recall@10"))


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _metrics(m: Mapping[str, Any] | None, names=_HELDOUT) -> str | None:
    if not m:
        return None
    parts = [f"{label} {_num(m[key])}" for key, label in names if key in m]
    return " | ".join(parts) or None


def _duration(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "n/a"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec} s" if m else f"{sec} s"


def _model_row(s: Mapping[str, Any]) -> str | None:
    if not s.get("model_uri"):
        return None
    extra = [f"version {s['model_version']}"] if s.get("model_version") else []
    extra += [f"MLflow run {str(s['mlflow_run_id'])[:12]}"] if s.get("mlflow_run_id") else []
    return s["model_uri"] + (f" ({', '.join(extra)})" if extra else "")


def _labels_row(cal: Mapping[str, Any] | None) -> str | None:
    if not cal or "accuracy" not in cal:
        return None
    n = f" on {cal['n_queries']} held-out queries" if cal.get("n_queries") else ""
    return (f"accuracy {_num(cal.get('accuracy'))} | quadratic kappa {_num(cal.get('kappa_quadratic'))} | "
            f"Spearman {_num(cal.get('spearman'))}{n}")


def _claim_row(c: Mapping[str, Any] | None) -> str | None:
    if not c:
        return None
    def pct(v: Any) -> str:
        return f"{100 * v:+.1f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"
    return (f"content {pct(c.get('content_rel_gain'))}, engagement {pct(c.get('engagement_rel_change'))} "
            f"-> {'met' if c.get('met') else 'NOT met'}")


def _cold_row(c: Mapping[str, Any] | None) -> str | None:
    if not c or "champion_cold" not in c:
        return None
    metric = c.get("metric", "ndcg@10")
    route = (c.get("cold_route") or {}).get("choice")
    cold = f"cold {_num(c.get('champion_cold'))}"
    if route and route != "champion":
        cold += f" (route {route}; trees alone {_num(c.get('champion_cold_unrouted'))})"
    zero_shot = f" | zero-shot bi-encoder {_num(c['bienc_zero_shot'])}" if "bienc_zero_shot" in c else ""
    return (f"{metric} warm {_num(c.get('champion_warm'))} | {cold} | content-only {_num(c.get('content_only'))}"
            + zero_shot)


def _esci_row(ev: Mapping[str, Any] | None) -> str | None:
    row = _metrics(ev, _HELDOUT[:3])
    if row and ev.get("n_queries"):
        row += f" ({ev['n_queries']} queries)"
    return row


def _time_row(s: Mapping[str, Any]) -> str | None:
    if "total_s" not in s:
        return None
    stages = s.get("timings_s") or {}
    top = sorted(stages.items(), key=lambda kv: -kv[1] if isinstance(kv[1], (int, float)) else 0)[:3]
    detail = ", ".join(f"{k} {_duration(v)}" for k, v in top)
    return _duration(s["total_s"]) + (f" (longest: {detail})" if detail else "")


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows of a `ltr.pipeline.run_all` summary, in reading order; absent parts are skipped."""
    op = summary.get("operating_point") or {}
    eng = summary.get("engagement_source") or (
        ("simulated" if summary["engagement_simulated"] else "logged") if "engagement_simulated" in summary else None)
    rows = [
        ("model", _model_row(summary)),
        ("operating point", f"alpha {_num(op.get('alpha'), 2)} | beta {_num(op.get('beta'))} | "
                            f"blend {_num(op.get('blend_weight'))}" if op else None),
        ("held-out queries", _metrics(summary.get("test_metrics"))),
        ("cold start", _cold_row(summary.get("cold_start"))),
        ("labels vs humans", _labels_row(summary.get("labels"))),
        ("paper's claim", _claim_row(summary.get("experiments_claim"))),
        ("ESCI, never seen", _esci_row(summary.get("evaluate_esci"))),
        ("engagement", eng),
        ("wall time", _time_row(summary)),
    ]
    return [(k, v) for k, v in rows if v]


def summary_table(summary: Mapping[str, Any], json_path: str | None = None) -> str:
    """A short aligned table of the run's results for the terminal; `json_path` names where the full JSON is."""
    rows = summary_rows(summary)
    width = max((len(k) for k, _ in rows), default=0)
    head = "Results" + (f" of {summary['run_dir']}" if summary.get("run_dir") else "")
    lines = [head, "-" * len(head)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    if json_path:
        lines.append(f"{'full results'.ljust(width)}  {json_path}")
    return "\n".join(lines)


__all__ = ["summary_rows", "summary_table"]
