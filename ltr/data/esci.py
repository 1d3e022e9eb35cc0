"""ESCI loader: the Amazon Shopping Queries Dataset (Reddy et al. 2022) into a dataset directory.

Two inputs are accepted, detected from the files present in `src`:
  * the original esci-data release: shopping_queries_dataset_examples.parquet and
    shopping_queries_dataset_products.parquet (filtered by locale and, optionally, split);
  * a folder in the layout of ../shared/data/esci/: products.parquet (the PRODUCTS schema) and
    judgments.parquet (query, product_id, esci_label and/or grade).
Why convert instead of reading ESCI in place: every stage then reads one layout, with query ids that
are the same hash everywhere (`schemas.query_id`), and bad files fail here, at the boundary.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .dataset import DatasetError, write_metadata, write_table
from .schemas import CANDIDATES, JUDGMENTS, PRODUCTS, QUERIES, query_id

ESCI_GRADES = {"E": 3, "S": 2, "C": 1, "I": 0, "EXACT": 3, "SUBSTITUTE": 2, "COMPLEMENT": 1, "IRRELEVANT": 0}
ORIGINAL_EXAMPLES = "shopping_queries_dataset_examples.parquet"
ORIGINAL_PRODUCTS = "shopping_queries_dataset_products.parquet"
_TAG = re.compile(r"<[^>]+>")


def esci_sample_dir() -> Path:
    """Where the shared ESCI sample lives: $LTR_ESCI_DIR, else ../shared/data/esci beside the repository.
    The one place benchmarks, tests and the pipeline look it up; it may not exist (callers skip or say so)."""
    env = os.environ.get("LTR_ESCI_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "esci"


def _strip_html(s: pd.Series) -> pd.Series:
    """The original descriptions carry HTML; graders and BM25 should see text."""
    def clean(v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return re.sub(r"\s+", " ", html.unescape(_TAG.sub(" ", v))).strip()
    return s.map(clean)


def _need(df: pd.DataFrame, cols: list[str], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DatasetError(f"{name}: missing column(s) {missing}. Fix: pass the unmodified esci-data file "
                           f"(it has {', '.join(cols)}).")


def _grades(labels: pd.Series, name: str) -> pd.Series:
    up = labels.astype(str).str.strip().str.upper()
    bad = sorted(set(up[~up.isin(list(ESCI_GRADES))]))
    if bad:
        raise DatasetError(f"{name}: column 'esci_label' has unknown value(s) {bad[:5]}. "
                           "Fix: use E/S/C/I (or exact/substitute/complement/irrelevant).")
    return up.map(ESCI_GRADES).astype("int64")


def _read_original(src: Path, locale: str, split: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ex = pd.read_parquet(src / ORIGINAL_EXAMPLES)
    _need(ex, ["query", "product_id", "esci_label", "product_locale"], ORIGINAL_EXAMPLES)
    locales = sorted(ex["product_locale"].dropna().unique())
    if locale not in locales:
        raise DatasetError(f"{ORIGINAL_EXAMPLES}: no rows for locale={locale!r}. Fix: use one of {locales}.")
    ex = ex[ex["product_locale"] == locale]
    if split is not None:
        _need(ex, ["split"], ORIGINAL_EXAMPLES)
        splits = sorted(ex["split"].dropna().unique())
        if split not in splits:
            raise DatasetError(f"{ORIGINAL_EXAMPLES}: no rows for split={split!r}. Fix: use one of {splits}.")
        ex = ex[ex["split"] == split]
    pr = pd.read_parquet(src / ORIGINAL_PRODUCTS)
    _need(pr, ["product_id", "product_title", "product_locale"], ORIGINAL_PRODUCTS)
    pr = pr[pr["product_locale"] == locale]
    rename = {"product_title": "title", "product_description": "description",
              "product_bullet_point": "bullet_points", "product_brand": "brand", "product_color": "color"}
    products = pr.rename(columns=rename)
    for c in ("description", "bullet_points", "brand", "color"):
        if c not in products.columns:
            products[c] = None
    products["title"] = products["title"].fillna("")
    products["description"] = _strip_html(products["description"])
    for c in ("category", "price", "rating", "rating_count"):  # not in the original release
        products[c] = None if c == "category" else float("nan")
    products = products[["product_id", "title", "description", "bullet_points", "brand", "color", "category", "price",
                         "rating", "rating_count"]]
    judg = pd.DataFrame({"query": ex["query"].astype(str).to_numpy(), "product_id": ex["product_id"].to_numpy(),
                         "esci_label": ex["esci_label"].astype(str).str.strip().str.upper().str[0].to_numpy(),
                         "grade": _grades(ex["esci_label"], ORIGINAL_EXAMPLES).to_numpy()})
    if "split" in ex.columns:
        judg["split"] = ex["split"].astype(str).to_numpy()
    return products, judg


def _read_folder(src: Path, split: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    products = pd.read_parquet(src / "products.parquet")
    judg = pd.read_parquet(src / "judgments.parquet")
    _need(judg, ["query", "product_id"], f"{src}/judgments.parquet")
    if "grade" not in judg.columns:
        _need(judg, ["esci_label"], f"{src}/judgments.parquet")
        judg["grade"] = _grades(judg["esci_label"], f"{src}/judgments.parquet")
    elif "esci_label" in judg.columns:
        mapped = _grades(judg["esci_label"], f"{src}/judgments.parquet")
        bad = judg["grade"].to_numpy() != mapped.to_numpy()
        if bad.any():
            raise DatasetError(f"{src}/judgments.parquet: {int(bad.sum())} row(s) where 'grade' disagrees with "
                               "'esci_label' (E/S/C/I = 3/2/1/0). Fix: correct or drop one of the columns.")
    if split is not None:
        if "split" not in judg.columns:
            raise DatasetError(f"{src}/judgments.parquet has no 'split' column. Fix: pass split=None.")
        judg = judg[judg["split"] == split]
    return products, judg


def load_esci(src: str | Path, out_dir: str | Path, locale: str = "us", split: str | None = None,
              max_queries: int | None = None) -> dict[str, Any]:
    """Convert ESCI at `src` into a dataset directory at `out_dir`; returns a summary (also in metadata.json).

    Queries are identified by `query_id(query)`; with `max_queries` a deterministic subset (the first N
    query ids in hash order, i.e. a seed-free pseudo-random sample) is kept.
    """
    src, out = Path(src), Path(out_dir)
    if max_queries is not None and max_queries < 1:
        raise ValueError("max_queries must be >= 1 (or None for all). Fix: e.g. max_queries=100.")
    if (src / ORIGINAL_EXAMPLES).exists() and (src / ORIGINAL_PRODUCTS).exists():
        fmt = "esci-data"
        products, judg = _read_original(src, locale, split)
    elif (src / "products.parquet").exists() and (src / "judgments.parquet").exists():
        fmt = "folder"
        if locale != "us":
            raise DatasetError(f"{src}: a dataset folder holds a single locale (us). Fix: pass locale='us' or "
                               "point src at the original esci-data files.")
        products, judg = _read_folder(src, split)
    else:
        raise DatasetError(f"{src}: no ESCI data found. Fix: point src at a folder holding {ORIGINAL_EXAMPLES} and "
                           f"{ORIGINAL_PRODUCTS} (github.com/amazon-science/esci-data), or products.parquet and "
                           "judgments.parquet (the layout of ../shared/data/esci/).")
    judg = judg.assign(query_id=[query_id(q) for q in judg["query"]])
    judg = judg.sort_values(["query_id", "product_id", "query"], kind="stable")
    dups = judg.duplicated(["query_id", "product_id"])
    n_dup = int(dups.sum())
    judg = judg[~dups]
    # one text per query id (texts differing only in case/space share an id)
    judg["query"] = judg.groupby("query_id", sort=False)["query"].transform("first")
    if max_queries is not None:
        keep = sorted(judg["query_id"].unique())[:max_queries]
        judg = judg[judg["query_id"].isin(keep)]
    if judg.empty:
        raise DatasetError(f"{src}: no judgments left after filtering (locale={locale}, split={split}). "
                           "Fix: relax the filters.")
    products = products.drop_duplicates("product_id")
    missing = sorted(set(judg["product_id"]) - set(products["product_id"]))
    if missing:
        raise DatasetError(f"{src}: {len(missing)} judged product_id(s) have no product row, e.g. {missing[:3]}. "
                           "Fix: use the matching products file.")
    products = products[products["product_id"].isin(set(judg["product_id"]))].sort_values("product_id")
    out.mkdir(parents=True, exist_ok=True)
    p = write_table(products.reset_index(drop=True), out / "products.parquet", PRODUCTS)
    j = write_table(judg.reset_index(drop=True), out / "judgments.parquet", JUDGMENTS)
    q = write_table(j[["query_id", "query"]].drop_duplicates("query_id").reset_index(drop=True),
                    out / "queries.parquet", QUERIES)
    c = write_table(j[["query_id", "product_id"]], out / "candidates.parquet", CANDIDATES)
    summary = {
        "source": "esci", "format": fmt, "locale": locale, "split": split, "max_queries": max_queries,
        "simulated_engagement": False,
        "counts": {"products": len(p), "queries": len(q), "judgments": len(j), "candidates": len(c),
                   "duplicate_pairs_dropped": n_dup},
        "grade_distribution": {k: int(v) for k, v in j["esci_label"].value_counts().sort_index().items()}
        if "esci_label" in j.columns else {str(k): int(v) for k, v in j["grade"].value_counts().sort_index().items()},
        "citation": "Reddy et al. 2022, Shopping Queries Dataset, arXiv:2206.06588 (Apache-2.0)",
    }
    write_metadata(out, summary)
    return summary


__all__ = ["ESCI_GRADES", "load_esci"]
