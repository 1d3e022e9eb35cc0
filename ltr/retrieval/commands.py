"""What `ltr retrieve` and `ltr mine` do, over files (the CLI only parses options and calls these).

Both read validated tables and write them atomically; `mine_file` can also write a dataset directory
whose candidates are the chosen pairs, for `ltr label --dataset` (it refuses to replace a directory it
did not write, and never writes into the source dataset).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ltr.data.dataset import Dataset, read_table, write_table
from ltr.data.schemas import RETRIEVED

from .config import MiningConfig, RetrievalConfig, RetrievalError
from .mining import rank_columns
from .retrievers import retrieve
from .stage import candidates_of, select, write_dataset


def retrieve_file(dataset: str | Path, out: str | Path, cfg: RetrievalConfig, tracking_uri: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Rank metadata for every query of `dataset` over its whole catalog, written to `out` (parquet)."""
    t0 = time.perf_counter()
    ds = Dataset.load(dataset)
    r = write_table(retrieve(ds.products, ds.queries, cfg, tracking_uri=tracking_uri, progress=progress),
                    out, RETRIEVED)
    found = {c: int(r[c].notna().sum()) for c in rank_columns(r)}
    return {"dataset": str(dataset), "out": str(out), "queries": int(r["query_id"].nunique()),
            "products": len(ds.products), "pairs": len(r), "k": cfg.k, "returned_per_retriever": found,
            "champion": cfg.champion, "seconds": round(time.perf_counter() - t0, 2)}


def _check_dataset_out(dataset: Path | None, dataset_out: Path) -> Path:
    if dataset is None:
        raise RetrievalError("--dataset-out needs --dataset (the source of products and queries). Fix: pass both.")
    if dataset_out.resolve() == Path(dataset).resolve():
        raise RetrievalError(f"--dataset-out {dataset_out} is the source dataset. Fix: write to a new directory.")
    meta = dataset_out / "metadata.json"
    ours = meta.exists() and json.loads(meta.read_text()).get("candidates", {}).get("source") == "ltr.retrieval"
    if dataset_out.exists() and any(dataset_out.iterdir()) and not ours:
        raise RetrievalError(f"--dataset-out {dataset_out} exists and was not written by `ltr mine`. Fix: pass a "
                             "new or empty directory.")
    return Path(dataset)


def mine_file(retrieved: str | Path, out: str | Path, cfg: MiningConfig, seed: int = 0,
              dataset: str | Path | None = None, dataset_out: str | Path | None = None) -> dict[str, Any]:
    """Levels and the budget allocation of a retrieved table, written to `out` (mined.parquet, with
    `selected`); with `dataset_out`, also a dataset directory whose candidates are the chosen pairs."""
    src = _check_dataset_out(Path(dataset) if dataset else None, Path(dataset_out)) if dataset_out else None
    r = read_table(retrieved, RETRIEVED, nonempty=True)
    nq = int(r["query_id"].nunique())
    mined = select(r.drop(columns=["level", "selected"], errors="ignore"), cfg, nq, seed)
    ds = Dataset.load(src) if src is not None else None
    unknown = set(mined["product_id"]) - set(ds.products["product_id"]) if ds is not None else set()
    if unknown:
        raise RetrievalError(f"{retrieved} names {len(unknown)} product(s) not in {src}/products.parquet, e.g. "
                             f"{sorted(unknown)[:3]}. Fix: pass the dataset the pairs were retrieved from.")
    write_table(mined, out, RETRIEVED)
    summary = {"retrieved": str(retrieved), "out": str(out), "queries": nq, "pairs": len(mined),
               "top": cfg.top, "budget": cfg.budget_for(nq), "selected": int(mined["selected"].sum()),
               "levels": {str(k): int(v) for k, v in mined["level"].value_counts().sort_index().items()},
               "allocation": mined.attrs.get("allocation", {}), "shortfall": mined.attrs.get("shortfall", 0),
               "weights": cfg.weights, "seed": seed}
    if src is not None:
        write_dataset(src, Path(dataset_out), candidates_of(mined), {"source": "ltr.retrieval", **summary})
        summary["dataset_out"] = str(dataset_out)
    return summary
