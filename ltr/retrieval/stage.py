"""Retrieval + mining as a dataset stage: a catalog with a query log in, a dataset with candidates out.

`mine_dataset` never writes into the source directory (it may be shared, read-only data): it writes
OUT/retrieved.parquet, OUT/mined.parquet (levels and the `selected` budget allocation) and OUT/dataset/,
a dataset directory holding the source's tables (hard links, else copies) and a candidates.parquet of the
chosen pairs with their `level`, which the labeler carries into every label as provenance. Every file is
written atomically and the dataset directory is swapped in whole, so a crash leaves no half dataset.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from ltr.data.dataset import Dataset, write_metadata, write_table
from ltr.data.schemas import CANDIDATES, RETRIEVED

from .config import MiningConfig, RetrievalConfig, RetrievalError
from .mining import allocate_budget, mine, rank_columns
from .retrievers import retrieve


def wants_retrieval(cfg: RetrievalConfig, ds: Dataset) -> bool:
    """`enabled: auto` retrieves exactly when the dataset brings no candidate lists."""
    return (not ds.brings_candidates) if cfg.enabled == "auto" else bool(cfg.enabled)


def check_labeler(labels_cfg: Any, ds: Dataset) -> None:
    """Fail before retrieval (minutes) rather than at labelling: a grader is fitted on human judgments."""
    tiers = [*(labels_cfg.cascade.tiers if labels_cfg.cascade else []), *labels_cfg.judges]
    uses_grader = labels_cfg.backend == "grader" or any(t.backend == "grader" for t in tiers)
    if uses_grader and not labels_cfg.grader.dir and ds.judgments.empty:
        raise RetrievalError(f"{ds.root} has no human judgments, and labels.backend '{labels_cfg.backend}' fits its "
                             "grader on them. Fix: set labels.grader.dir to a fitted grader, or grade with an LLM "
                             "(labels.backend: openai, causal_lm or cascade).")


def select(retrieved: pd.DataFrame, mcfg: MiningConfig, n_queries: int, seed: int) -> pd.DataFrame:
    """The mined table with `selected` = chosen by the budget allocation; allocation in .attrs."""
    mined = mine(retrieved, mcfg)
    sel = allocate_budget(mined, mcfg.budget_for(n_queries), mcfg.weights, seed=seed)
    chosen = pd.MultiIndex.from_frame(sel[["query_id", "product_id"]])
    mined["selected"] = pd.MultiIndex.from_frame(mined[["query_id", "product_id"]]).isin(chosen)
    mined.attrs = dict(sel.attrs)
    return mined


def candidates_of(mined: pd.DataFrame) -> pd.DataFrame:
    """CANDIDATES rows of the selected pairs: best rank over the retrievers, and the level."""
    sel = mined[mined["selected"]]
    best = sel[rank_columns(sel)].min(axis=1)
    out = pd.DataFrame({"query_id": sel["query_id"], "product_id": sel["product_id"],
                        "retrieval_rank": best.round().astype("int64"), "level": sel["level"]})
    return CANDIDATES.validate(out.sort_values(["query_id", "product_id"]))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_dataset(src: Path, out: Path, candidates: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """OUT = the source's tables + the mined candidates, built beside OUT and swapped in whole."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(src.glob("*.parquet")):
        if f.name != "candidates.parquet":
            _link_or_copy(f, tmp / f.name)
    write_table(candidates, tmp / "candidates.parquet", CANDIDATES)
    src_meta = json.loads((src / "metadata.json").read_text()) if (src / "metadata.json").exists() else {}
    write_metadata(tmp, {**src_meta, "candidates": meta})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def mine_dataset(src: str | Path, out_dir: str | Path, rcfg: RetrievalConfig, mcfg: MiningConfig, seed: int = 0,
                 tracking_uri: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Retrieve for every query of `src` over its whole catalog, mine levels, allocate the label budget,
    write OUT/{retrieved,mined}.parquet and the dataset OUT/dataset; returns the summary (also in its
    metadata.json under "candidates")."""
    src, out_dir = Path(src), Path(out_dir)
    ds = Dataset.load(src)
    retrieved = write_table(retrieve(ds.products, ds.queries, rcfg, tracking_uri=tracking_uri, progress=progress),
                            out_dir / "retrieved.parquet", RETRIEVED)
    mined = select(retrieved, mcfg, len(ds.queries), seed)
    write_table(mined, out_dir / "mined.parquet", RETRIEVED)
    summary = {"source": "ltr.retrieval", "from": str(src), "queries": len(ds.queries),
               "retrieved_pairs": len(retrieved), "retrievers": rank_columns(retrieved), "k": rcfg.k,
               "top": mcfg.top, "budget": mcfg.budget_for(len(ds.queries)), "selected": int(mined["selected"].sum()),
               "levels": {str(k): int(v) for k, v in mined["level"].value_counts().sort_index().items()},
               "allocation": mined.attrs.get("allocation", {}), "shortfall": mined.attrs.get("shortfall", 0),
               "weights": mcfg.weights, "seed": seed, "champion": rcfg.champion,
               "bi_encoder": str(rcfg.bienc_path) if rcfg.bienc_path else "all-MiniLM-L6-v2 (zero-shot)"}
    write_dataset(src, out_dir / "dataset", candidates_of(mined), summary)
    return summary
