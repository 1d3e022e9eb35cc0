"""Imported judgments as labels: ESCI, OpenSearch judgment JSON, TREC qrels, CSV.

Human or third-party grades enter the same LABELS table as LLM grades (one-hot distribution,
score = grade / scale_max, backend "imported", model "<format>:<file>", prompt_version "human"),
so downstream stages need no special case.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.schemas import LABELS, query_id

FORMATS = ("esci", "opensearch", "trec", "csv")
_ESCI = {"E": 3, "S": 2, "C": 1, "I": 0}


class ImportError_(ValueError):
    """An imported judgment file is malformed; the message names the file, the field and the fix."""


def _grade_frame(path: Path, fmt: str) -> pd.DataFrame:
    """Columns: query_id, product_id, rating (float, raw scale)."""
    if fmt == "esci":
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        if "grade" not in df.columns:
            if "esci_label" not in df.columns:
                raise ImportError_(f"{path}: ESCI judgments need a 'grade' or 'esci_label' column.")
            bad = set(df["esci_label"]) - set(_ESCI)
            if bad:
                raise ImportError_(f"{path}: esci_label values {sorted(bad)} are not E/S/C/I.")
            df = df.assign(grade=df["esci_label"].map(_ESCI))
        if "query" not in df.columns or "product_id" not in df.columns:
            raise ImportError_(f"{path}: ESCI judgments need 'query' and 'product_id' columns.")
        return pd.DataFrame({"query_id": [query_id(q) for q in df["query"]], "product_id": df["product_id"].astype(str),
                             "rating": df["grade"].astype(float)})
    if fmt == "opensearch":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ImportError_(f"{path}: not valid JSON ({e}).") from e
        items = doc.get("judgmentRatings", doc.get("judgments")) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ImportError_(f"{path}: expected a 'judgmentRatings' list of {{query, ratings:[{{docId, rating}}]}}.")
        rows = []
        for i, it in enumerate(items):
            if "query" not in it or "ratings" not in it:
                raise ImportError_(f"{path}: judgmentRatings[{i}] needs 'query' and 'ratings'.")
            for r in it["ratings"]:
                try:
                    rows.append((query_id(it["query"]), str(r["docId"]), float(r["rating"])))
                except (KeyError, TypeError, ValueError) as e:
                    raise ImportError_(f"{path}: judgmentRatings[{i}] has a rating without numeric 'rating' "
                                       f"and 'docId' ({e!r}).") from None
        return pd.DataFrame(rows, columns=["query_id", "product_id", "rating"])
    if fmt == "trec":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 4:
                raise ImportError_(f"{path}:{n}: a qrels line is 'qid iter docid rel', got {line!r}.")
            try:
                rows.append((parts[0], parts[2], float(parts[3])))
            except ValueError:
                raise ImportError_(f"{path}:{n}: relevance {parts[3]!r} is not a number.") from None
        df = pd.DataFrame(rows, columns=["query_id", "product_id", "rating"])
        # qids that are not already our ids are treated as query text
        df["query_id"] = [q if q.startswith("q_") else query_id(q) for q in df["query_id"]]
        return df
    if fmt == "csv":
        df = pd.read_csv(path)
        qcol = "query_id" if "query_id" in df.columns else "query" if "query" in df.columns else None
        rcol = "grade" if "grade" in df.columns else "rating" if "rating" in df.columns else None
        if qcol is None or rcol is None or "product_id" not in df.columns:
            raise ImportError_(f"{path}: CSV needs columns (query or query_id), product_id, (grade or rating); "
                               f"got {list(df.columns)}.")
        q = df[qcol].astype(str) if qcol == "query_id" else [query_id(x) for x in df[qcol]]
        return pd.DataFrame({"query_id": q, "product_id": df["product_id"].astype(str),
                             "rating": pd.to_numeric(df[rcol], errors="raise").astype(float)})
    raise ImportError_(f"unknown judgment format {fmt!r}. Fix: use one of {FORMATS}.")


def import_labels(path: str | Path, fmt: str, scale_max: float = 3.0) -> pd.DataFrame:
    """Read judgments in `fmt` and return a validated LABELS table."""
    path = Path(path)
    if not path.exists():
        raise ImportError_(f"{path}: file not found.")
    df = _grade_frame(path, fmt)
    if df.empty:
        raise ImportError_(f"{path}: no judgments found.")
    if df["rating"].isna().any() or (df["rating"] < 0).any() or (df["rating"] > scale_max).any():
        raise ImportError_(f"{path}: ratings must be within [0, {scale_max}]. Fix: rescale them or set scale_max.")
    df = df.drop_duplicates(["query_id", "product_id"], keep="last")
    score = (df["rating"] / scale_max).to_numpy()
    grade = np.clip(np.rint(score * 3), 0, 3).astype(int)
    onehot = np.eye(4)[grade]
    out = pd.DataFrame({"query_id": df["query_id"].to_numpy(), "product_id": df["product_id"].to_numpy(),
                        "score": score, **{f"p{k}": onehot[:, k] for k in range(4)},
                        "backend": "imported", "model": f"{fmt}:{path.name}", "prompt_version": "human",
                        "cost": 0.0, "created_at": pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC"),
                        "grade": grade})
    return LABELS.validate(out, where=f"importing {path.name}")
