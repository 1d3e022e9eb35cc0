"""Human corrections of (query, product) grades: the label store behind the relevance workbench.

    store = HumanLabels(human_store_path(RUN), known_products=run_products(RUN))
    store.add("red shoes", "p_12", 3, who="ana", replaces=1.2, replaces_source="llm:grader@v1")
    store.latest()          # what wins in the next `ltr run` (ltr.pipeline.stage_labels)
    store.export(PATH)      # a judgments parquet (JUDGMENTS schema + provenance columns)

A correction is evidence, so nothing is ever updated or deleted: every click is one row committed in its own
transaction (SQLite, WAL, synchronous=FULL), the latest row of a pair is its grade. Two browsers (two HTTP
workers, two processes) correcting at once both land, since each writer takes the write lock only for its
one INSERT; a crash mid-correction rolls that one back and leaves every committed row readable.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ltr.data.schemas import JUDGMENTS, normalize_query, query_id

GRADES = (0, 1, 2, 3)  # ESCI Irrelevant / Complement / Substitute / Exact (ltr.data.schemas.JUDGMENTS)
_MAX_LEN = {"query": 1000, "product_id": 200, "who": 200, "replaces_source": 200, "note": 2000}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL, query TEXT NOT NULL, product_id TEXT NOT NULL,
    grade INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 3),
    who TEXT NOT NULL, at TEXT NOT NULL,
    replaces REAL, replaces_source TEXT, note TEXT
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS corrections_pair ON corrections (query_id, product_id, id)"
COLUMNS = ("id", "query_id", "query", "product_id", "grade", "who", "at", "replaces", "replaces_source", "note")


class HumanLabelError(ValueError):
    """A correction that cannot be stored; `field` names the offending input, so an HTTP layer answers 4xx
    pointing at it."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"{field}: {msg}")
        self.field = field


class LabelStoreError(ValueError):
    """The store file itself is unusable (not the request's fault: an HTTP layer answers 5xx)."""


def human_store_path(run_dir: str | Path) -> Path:
    """Beside the run's labels, so a run dir carries its corrections and `ltr run` into it finds them."""
    return Path(run_dir) / "labels" / "human.sqlite"


def run_products(run_dir: str | Path) -> set[str]:
    """The product ids a correction for this run may name: the catalog of the dataset the run used
    (reports/summary.json's `dataset`, else RUN/dataset)."""
    run_dir = Path(run_dir)
    summary = run_dir / "reports" / "summary.json"
    ds = Path(json.loads(summary.read_text()).get("dataset", run_dir / "dataset")) if summary.exists() \
        else run_dir / "dataset"
    if not (ds / "products.parquet").exists():
        raise LabelStoreError(f"{run_dir}: no catalog found (looked for {ds}/products.parquet). Fix: pass a "
                              "run dir written by `ltr run`.")
    return set(pd.read_parquet(ds / "products.parquet", columns=["product_id"])["product_id"].astype(str))


# --- validation: once, here, so every caller (page, CLI, notebook) refuses the same things ---------------

def _text(field: str, value: Any, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise HumanLabelError(field, f"must be non-blank text, got {value!r}. Fix: send a {field}.")
    if len(value) > _MAX_LEN[field]:
        raise HumanLabelError(field, f"is {len(value)} characters long. Fix: keep it to {_MAX_LEN[field]}.")
    return value.strip() if required else value


def _grade(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) or \
        isinstance(value, float) and value.is_integer() or isinstance(value, str) and value.strip().isdigit()
    if not ok or int(float(value)) not in GRADES:
        raise HumanLabelError("grade", f"must be a whole number 0..3 (ESCI: 3 exact, 2 substitute, 1 complement, "
                                       f"0 irrelevant), got {value!r}. Fix: send one of 0, 1, 2, 3.")
    return int(float(value))


def _replaces(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 3) \
            or math.isnan(value):
        raise HumanLabelError("replaces", f"must be the grade shown before, a number in 0..3 (an LLM's expected "
                                          f"grade may be fractional: score * 3), got {value!r}. Fix: send it or "
                                          "leave it out.")
    return float(value)


def _product(value: Any, known: set[str] | None) -> str:
    pid = _text("product_id", value)
    if known is not None and pid not in known:
        raise HumanLabelError("product_id", f"{pid!r} is not in the run's catalog. Fix: correct a product the "
                                            "run ranks (its dataset's products.parquet).")
    return pid


# --- the store ----------------------------------------------------------------------------------------

class HumanLabels:
    """One connection per instance, shared by the threads of a server behind a lock; other processes open
    their own and SQLite serialises the writers (busy timeout 30 s)."""

    def __init__(self, path: str | Path, known_products: set[str] | None = None):
        self.path = Path(path)
        self.known_products = known_products
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a click acknowledged is a click kept, power cut or not
            self._db.execute(_SCHEMA)
            self._db.execute(_INDEX)
        except sqlite3.DatabaseError as e:
            raise LabelStoreError(f"human label store {self.path} is not a usable SQLite database ({e}). Fix: "
                                  "restore it from a backup or move it aside (its corrections are lost).") from e

    def add(self, query: str, product_id: str, grade: int, who: str, replaces: float | None = None,
            replaces_source: str | None = None, note: str | None = None,
            known_products: set[str] | None = None) -> dict[str, Any]:
        """Commit one correction; returns the stored row. Without `replaces`, an earlier correction of the
        pair is what this one replaces (read in the same transaction, so two racing clicks chain)."""
        q = _text("query", query)
        row = {"query_id": query_id(q), "query": q,
               "product_id": _product(product_id, known_products if known_products is not None
                                      else self.known_products),
               "grade": _grade(grade), "who": _text("who", who),
               "at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
               "replaces": _replaces(replaces), "replaces_source": _text("replaces_source", replaces_source, False),
               "note": _text("note", note, False)}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if row["replaces"] is None:
                    prev = self._db.execute("SELECT grade FROM corrections WHERE query_id=? AND product_id=? "
                                            "ORDER BY id DESC LIMIT 1", (row["query_id"], row["product_id"])).fetchone()
                    if prev is not None:
                        row["replaces"], row["replaces_source"] = float(prev[0]), "human"
                cols = COLUMNS[1:]
                cur = self._db.execute(f"INSERT INTO corrections ({','.join(cols)}) VALUES "
                                       f"({','.join('?' * len(cols))})", tuple(row[c] for c in cols))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {"id": cur.lastrowid, **row}

    def _frame(self, where: str = "", args: tuple = ()) -> pd.DataFrame:
        with self._lock:
            df = pd.read_sql_query(f"SELECT {','.join(COLUMNS)} FROM corrections {where} ORDER BY id",
                                   self._db, params=args)
        df["at"] = pd.to_datetime(df["at"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
        df["replaces"] = df["replaces"].astype("float64")
        return df

    def history(self, query_id: str | None = None, product_id: str | None = None) -> pd.DataFrame:
        """Every correction, oldest first: the audit trail (who overrode whom, and when)."""
        conds = [(c, v) for c, v in (("query_id", query_id), ("product_id", product_id)) if v is not None]
        where = ("WHERE " + " AND ".join(f"{c}=?" for c, _ in conds)) if conds else ""
        return self._frame(where, tuple(v for _, v in conds))

    def latest(self) -> pd.DataFrame:
        """The last correction of every pair: the grade that wins."""
        return self._frame("WHERE id IN (SELECT MAX(id) FROM corrections GROUP BY query_id, product_id)")

    def state(self) -> dict[str, int]:
        """Rows and last id: append-only, so this pair changes with every correction (the pipeline's stamp)."""
        with self._lock:
            n, last = self._db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM corrections").fetchone()
        return {"rows": int(n), "last_id": int(last)}

    def export(self, path: str | Path) -> Path:
        """The latest corrections as a judgments parquet (read back by `read_table(path, JUDGMENTS)`, usable
        as a dataset's judgments.parquet), with who / at / replaces / replaces_source / note / correction_id."""
        from ltr.data.dataset import write_table
        df = self.latest().rename(columns={"id": "correction_id"})
        first = ["query", "query_id", "product_id", "grade"]
        write_table(df[first + [c for c in df.columns if c not in first]], path, JUDGMENTS)
        return Path(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "HumanLabels":
        return self

    def __exit__(self, *a) -> None:
        self.close()


def human_state(run_dir: str | Path) -> dict[str, int] | None:
    """The run's store state, or None when it has no correction (no file is created: a run without the
    workbench keeps its stamps)."""
    p = human_store_path(run_dir)
    if not p.exists():
        return None
    with HumanLabels(p) as s:
        st = s.state()
    return st if st["rows"] else None


# --- how corrections win over the labeler's grades -----------------------------------------------------

def _dataset_query_ids(latest: pd.DataFrame, queries: pd.DataFrame | None, known: set[str]) -> pd.Series:
    """A correction's query id is the hash of its text (`schemas.query_id`), as every loader here makes them;
    a dataset with its own ids is matched by normalised query text instead."""
    if queries is None or latest["query_id"].isin(known).all():
        return latest["query_id"]
    by_text = dict(zip(queries["query"].map(normalize_query), queries["query_id"].astype(str)))
    mapped = latest["query"].map(normalize_query).map(by_text)
    return latest["query_id"].where(latest["query_id"].isin(known), mapped.fillna(latest["query_id"]))


def _human_rows(inc: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """Corrections as LABELS rows: a person's grade is certain (one-hot) and free; who and which correction
    travel in model / prompt_version, so the label view's labeler string names them."""
    g = inc["grade"].to_numpy()
    return pd.DataFrame({"query_id": inc["query_id"], "product_id": inc["product_id"], "score": g / 3.0,
                         **{f"p{k}": (g == k).astype("float64") for k in GRADES},
                         "backend": "human", "model": inc["who"],
                         "prompt_version": [f"correction#{i}" for i in inc["id"]], "cost": 0.0,
                         "output_mode": "human/one-hot", "created_at": inc["at"], "grade": g,
                         **{c: inc[c] for c in extra}})


def override_labels(labels: pd.DataFrame, latest: pd.DataFrame | None, candidates: pd.DataFrame,
                    queries: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The LABELS table with each corrected candidate pair's row replaced by the human grade, and counts
    for the stage summary. A corrected pair outside the candidates is not trained on (counted; it stays in
    the export); a candidate the labeler left ungraded (budget) gets the human row."""
    keys = ["query_id", "product_id"]
    if latest is None or latest.empty:
        return labels, {"corrections": 0, "applied": 0, "changed": 0, "added": 0, "not_in_candidates": 0}
    lat = latest.assign(query_id=_dataset_query_ids(latest, queries, set(candidates["query_id"].astype(str))))
    extra = ["level"] if "level" in candidates.columns and "level" in labels.columns else []
    inc = lat.merge(candidates[keys + extra], on=keys, how="inner")
    human = _human_rows(inc, extra)
    old = inc[keys].merge(labels[keys + ["score"]], on=keys, how="left")["score"].to_numpy()
    hit = labels.set_index(keys).index.isin(human.set_index(keys).index)
    human = human[[c for c in human.columns if c in labels.columns]]
    out = pd.concat([labels[~hit], human], ignore_index=True).sort_values(keys).reset_index(drop=True)
    changed = pd.isna(old) | (abs(old - human["score"].to_numpy()) > 1e-9)
    return out, {"corrections": len(lat), "applied": len(inc), "changed": int(changed.sum()),
                 "added": int(pd.isna(old).sum()), "not_in_candidates": len(lat) - len(inc)}
