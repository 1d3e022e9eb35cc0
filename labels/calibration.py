"""Calibration report: how well labels agree with human judgments.

Accuracy, quadratic-weighted Cohen's kappa (hard grades), Spearman (continuous score vs human grade),
the confusion matrix and per-grade figures; as a dict/JSON and a short markdown table.
The hard grade is the label table's `grade` column when present (a backend's own decision rule),
else the given cut points on the expected grade, else the rounded expected grade.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from ltr.data.dataset import read_table, with_query_ids
from ltr.data.schemas import JUDGMENTS, LABELS

from .metrics import apply_thresholds, confusion, quadratic_kappa, spearman

GRADE_NAMES = {3: "E", 2: "S", 1: "C", 0: "I"}


def _load(x: pd.DataFrame | str | Path, schema) -> pd.DataFrame:
    return read_table(x, schema) if isinstance(x, (str, Path)) else schema.validate(x, where="calibrate")


def calibrate(labels: pd.DataFrame | str | Path, judgments: pd.DataFrame | str | Path,
              thresholds: Sequence[float] | None = None, out_dir: str | Path | None = None,
              name: str = "calibration") -> dict:
    """Agreement of `labels` (LABELS table) with human `judgments` (JUDGMENTS table) on their common pairs."""
    lab = _load(labels, LABELS)
    jud = with_query_ids(_load(judgments, JUDGMENTS))
    m = lab.merge(jud[["query_id", "product_id", "grade"]].rename(columns={"grade": "human"}),
                  on=["query_id", "product_id"], how="inner")
    if m.empty:
        raise ValueError("calibrate: labels and judgments share no (query_id, product_id) pair. Fix: label the "
                         "judged pairs (candidates of the same dataset) or pass the matching judgments.")
    eg = 3.0 * m["score"].to_numpy()
    if thresholds is not None:
        pred = apply_thresholds(eg, thresholds)
        rule = f"cut points {list(map(float, thresholds))} on expected grade"
    elif "grade" in m.columns and m["grade"].notna().all():
        pred = m["grade"].astype(int).to_numpy()
        rule = "labels' own grade column"
    else:
        pred = apply_thresholds(eg, [0.5, 1.5, 2.5])
        rule = "rounded expected grade"
    y = m["human"].astype(int).to_numpy()
    cm = confusion(y, pred)
    per = {}
    for g in range(4):
        tp = int(cm[g, g])
        n_true, n_pred = int(cm[g].sum()), int(cm[:, g].sum())
        per[GRADE_NAMES[g]] = {"grade": g, "n_human": n_true, "n_predicted": n_pred,
                               "precision": tp / n_pred if n_pred else None, "recall": tp / n_true if n_true else None,
                               "mean_score": float(m["score"][y == g].mean()) if n_true else None}
    rep = {"n_pairs": int(len(m)), "n_queries": int(m["query_id"].nunique()),
           "accuracy": float((pred == y).mean()), "kappa_quadratic": quadratic_kappa(y, pred),
           "spearman": spearman(m["score"], y), "grade_rule": rule,
           "confusion_matrix": {"rows": "human grade 0..3", "cols": "predicted grade 0..3", "counts": cm.tolist()},
           "per_grade": per}
    if "backend" in m.columns:
        rep["backends"] = sorted(m["backend"].astype(str).unique())
    rep["markdown"] = to_markdown(rep)
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps(rep, indent=2) + "\n")
        (d / f"{name}.md").write_text(rep["markdown"] + "\n")
    return rep


def to_markdown(rep: dict) -> str:
    lines = [f"Agreement with human judgments: {rep['n_pairs']} pairs, {rep['n_queries']} queries "
             f"(hard grade: {rep['grade_rule']})", "",
             "| accuracy | kappa (quadratic) | Spearman |", "|---|---|---|",
             f"| {rep['accuracy']:.3f} | {rep['kappa_quadratic']:.3f} | {rep['spearman']:.3f} |", "",
             "| human \\ predicted | I (0) | C (1) | S (2) | E (3) | recall |", "|---|---|---|---|---|---|"]
    cm = rep["confusion_matrix"]["counts"]
    for g in range(4):
        r = rep["per_grade"][GRADE_NAMES[g]]["recall"]
        lines.append(f"| {GRADE_NAMES[g]} ({g}) | " + " | ".join(str(c) for c in cm[g]) +
                     f" | {'-' if r is None else f'{r:.2f}'} |")
    return "\n".join(lines)
