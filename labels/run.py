"""Labelling runs: grade every candidate pair of a dataset and write the LABELS table.

    label_pairs(dataset_dir, out_path, LabelConfig(...)) -> summary dict
    calibrate(labels_df_or_path, judgments_df_or_path) -> report dict

Every new grade is committed to the SQLite cache as it returns, so a killed run re-run with the same
config grades only what is missing. Also runnable as `python -m labels.run DATASET OUT [--config X.yaml]`
(the lead's `ltr label` calls the same functions).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.dataset import Dataset, write_table
from ltr.data.schemas import LABELS

from .backends.base import Backend, LabelerError, Pair
from .cache import LabelCache, grade_with_cache
from .calibration import calibrate
from .config import JudgeConfig, LabelConfig, TierConfig
from .cost import CostMeter

__all__ = ["label_pairs", "calibrate", "build_pairs", "make_backend", "fit_grader_on_dataset", "pilot_queries"]


def build_pairs(ds: Dataset) -> list[Pair]:
    """Candidate pairs with their query text and product record, in a stable order."""
    qtext = dict(zip(ds.queries["query_id"], ds.queries["query"]))
    missing = set(ds.candidates["query_id"]) - set(qtext)
    if missing:
        raise LabelerError(f"{ds.root}: candidates name {len(missing)} query_id(s) absent from queries, e.g. "
                           f"{sorted(missing)[:3]}. Fix: add them to queries.parquet.")
    prods = ds.products.set_index("product_id", drop=False)
    cand = ds.candidates.sort_values(["query_id", "product_id"])
    return [Pair(q, qtext[q], p, prods.loc[p].to_dict()) for q, p in zip(cand["query_id"], cand["product_id"])]


def pilot_queries(judged: set[str] | list[str], cfg: LabelConfig, exclude: set[str] = frozenset()
                  ) -> tuple[set[str], set[str]]:
    """(seed, held): which judged queries the grader learns from and which it is calibrated on.

    With a pilot (`seed_share` / `seed_queries`) the seed is drawn from the judged queries outside `exclude`
    (the run's test queries), and every other eligible query is held out: its human grades serve the
    calibration report only. Without one, a seeded 20% of the eligible queries is held out for calibration."""
    qs = np.array(sorted(set(map(str, judged)) - set(exclude)))
    rng = np.random.default_rng(cfg.grader.seed)
    if cfg.seed_share is not None or cfg.seed_queries is not None:
        n = cfg.seed_queries if cfg.seed_queries is not None else int(round(cfg.seed_share * len(qs)))
        if n < 2 or n > len(qs):
            raise LabelerError(f"the pilot asks for {n} of {len(qs)} eligible judged queries. Fix: set "
                               "labels.seed_share / labels.seed_queries to between 2 queries and all of them.")
        seed = set(rng.choice(qs, size=n, replace=False).tolist())
        return seed, set(qs.tolist()) - seed
    n_hold = int(round(0.2 * len(qs))) if len(qs) >= 5 else 0
    held = set(rng.choice(qs, size=n_hold, replace=False).tolist()) if n_hold else set()
    return set(qs.tolist()) - held, held


def fit_grader_on_dataset(ds: Dataset, out_dir: Path, cfg: LabelConfig, exclude: set[str] = frozenset(),
                          grades: pd.DataFrame | None = None) -> tuple[Path, set[str]]:
    """Fit the local grader on the dataset's human judgments of its seed queries (`pilot_queries`), so the
    calibration report is measured on queries it never saw and the run's test queries (`exclude`) stay
    unseen. `grades` (query_id, product_id, grade) replaces the judgments' grades, e.g. raters of a known
    noise level. Writes grader/, grader/seed_queries.json and grader/heldout_queries.json."""
    from .backends.grader import FineTunedGrader
    if ds.judgments.empty:  # a catalog with a query log only (its candidates mined by ltr.retrieval)
        raise LabelerError(f"{ds.root}: the grader backend is fitted on human judgments and this dataset has none. "
                           "Fix: set labels.grader.dir to a fitted grader, or grade with backend openai, "
                           "causal_lm, cascade (tiers without grader) or imported.")
    jud = ds.judgments
    if grades is not None:
        jud = jud.drop(columns="grade").merge(grades[["query_id", "product_id", "grade"]],
                                              on=["query_id", "product_id"], how="inner")
    j = jud.merge(ds.products, on="product_id", how="inner")
    seed, held = pilot_queries(set(j["query_id"]), cfg, exclude)
    tr = j[j["query_id"].isin(seed)]
    g = FineTunedGrader(config=cfg.grader)
    g.fit(tr["query"].tolist(), tr.to_dict("records"), tr["grade"].to_numpy())
    d = out_dir / "grader"
    g.save(d)
    (d / "seed_queries.json").write_text(json.dumps(sorted(seed)) + "\n")
    (d / "heldout_queries.json").write_text(json.dumps(sorted(held)) + "\n")
    return d, held


def _single(kind: str, section: Any, cfg: LabelConfig, meter: CostMeter, grader_dir: Path | None,
            prompt_version: str | None = None, client: Any = None) -> Backend:
    if kind == "openai":
        from .backends.openai import OpenAIBackend
        return OpenAIBackend(section or cfg.openai, prompt_version or cfg.prompt_version, meter, cfg.prices,
                             cfg.batch.price_factor)
    if kind == "causal_lm":
        from .backends.causal_lm import CausalLMBackend
        s = section or cfg.causal_lm
        if s is None:
            raise ValueError("a causal_lm backend needs a causal_lm section with `path` (a local model dir)")
        return CausalLMBackend(s.path, prompt_version or cfg.prompt_version, s.batch_size, s.max_length)
    if kind == "grader":
        from .backends.grader import GraderBackend
        d = (section.dir if section is not None and section.dir else None) or cfg.grader.dir or grader_dir
        if d is None:
            raise ValueError("grader backend needs grader.dir (a fitted grader) or a dataset with judgments.")
        if client is not None:  # compute.engine: dask -> graded over partitions on the workers
            from .distributed import BackendSpec, PartitionedBackend
            return PartitionedBackend(BackendSpec.of(GraderBackend, grader_dir=str(d), progress=False), client)
        return GraderBackend(d)
    raise ValueError(f"unknown backend {kind!r}")


def make_backend(cfg: LabelConfig, meter: CostMeter, cache: LabelCache | None, grader_dir: Path | None = None,
                 client: Any = None) -> Backend:
    """The configured backend; with a Dask `client`, local tiers (the grader) grade over partitions on the
    workers and API tiers stay in this process (labels.distributed)."""
    if cfg.backend == "cascade":
        from .cascade import CascadeBackend, Tier
        assert cfg.cascade is not None
        tiers = []
        for t in cfg.cascade.tiers:
            t: TierConfig
            sec = {"openai": t.openai, "causal_lm": t.causal_lm, "grader": t.grader}[t.backend]
            tiers.append(Tier(_single(t.backend, sec, cfg, meter, grader_dir, client=client),
                              t.escalate_if_margin_below,
                              t.escalate_if_entropy_above))
        return CascadeBackend(tiers, cache)
    if cfg.backend == "judges":
        return _judges(cfg, meter, cache, grader_dir, client)
    return _single(cfg.backend, None, cfg, meter, grader_dir, client=client)


def _judges(cfg: LabelConfig, meter: CostMeter, cache: LabelCache | None, grader_dir: Path | None,
            client: Any = None) -> Backend:
    from .judges import JudgesBackend
    judges = []
    for j in cfg.judges:
        j: JudgeConfig
        sec = {"openai": j.openai, "causal_lm": j.causal_lm, "grader": j.grader}[j.backend]
        be = _single(j.backend, sec, cfg, meter, grader_dir, j.prompt_version, client)
        judges.append((j.name or f"{be.name}:{be.model}@{be.prompt_version}", be))
    return JudgesBackend(judges, cfg.combine, cache)


def _labels_frame(pairs: list[Pair], results, created: pd.Timestamp) -> pd.DataFrame:
    rows = [(r.query_id, r.product_id, min(1.0, max(0.0, r.score)), *r.probs, r.backend, r.model, r.prompt_version,
             r.cost, r.output_mode, r.grade) for r in results if r is not None]
    df = pd.DataFrame(rows, columns=["query_id", "product_id", "score", "p0", "p1", "p2", "p3", "backend", "model",
                                     "prompt_version", "cost", "output_mode", "grade"])
    df.insert(len(df.columns) - 1, "created_at", created)
    return df.sort_values(["query_id", "product_id"]).reset_index(drop=True)


def _with_level(labels: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """A mined pair's difficulty level (candidates.parquet `level`, from ltr.retrieval) travels with its
    label as provenance, so every label says why the pair was chosen for grading."""
    if "level" not in candidates.columns:
        return labels
    return labels.merge(candidates[["query_id", "product_id", "level"]], on=["query_id", "product_id"], how="left")


def _import_only(ds: Dataset, out_path: Path, cfg: LabelConfig, summary: dict[str, Any], t0: float) -> dict:
    """Imported judgments need no grading: keep those of the dataset's candidate pairs."""
    from .backends.imported import import_labels
    assert cfg.imported is not None
    lab = import_labels(cfg.imported.path, cfg.imported.format)
    lab = lab.merge(ds.candidates[["query_id", "product_id"]], on=["query_id", "product_id"], how="inner")
    lab = _with_level(lab, ds.candidates)
    valid = write_table(lab, out_path, LABELS)
    summary.update(n_pairs=len(ds.candidates), n_labelled=len(valid), seconds=round(time.perf_counter() - t0, 2))
    return summary


def _grade_batch(backend: Backend, pairs: list[Pair], cache: LabelCache, cfg: LabelConfig, bar,
                 summary: dict[str, Any]) -> tuple[list, int, int]:
    """Through the Batch API; then every pair's label, new or old, from the cache."""
    from .backends.openai import OpenAIBackend
    from .batch import grade_in_batches
    assert isinstance(backend, OpenAIBackend)
    n_cached = len(cache.get_many(backend.name, backend.model, backend.prompt_version, pairs))
    bar.update(n_cached)
    rep = grade_in_batches(backend, pairs, cache, cfg.batch, progress=bar.update)
    summary["batch"] = rep
    backend.stopped_reason = rep["stopped_reason"] or ("batch_pending" if rep["pending"] else None)
    hit = cache.get_many(backend.name, backend.model, backend.prompt_version, pairs)
    results = [hit.get(cache.key(backend.name, backend.model, backend.prompt_version, p)) for p in pairs]
    return results, sum(r is not None for r in results) - rep["from_batch"] - rep["retried_live"], \
        rep["from_batch"] + rep["retried_live"]


def _grade_all(backend: Backend, pairs: list[Pair], cache: LabelCache, meter: CostMeter, cfg: LabelConfig,
               progress: bool, summary: dict[str, Any]) -> tuple[list, int | None, int | None]:
    """(results aligned with pairs, from cache, graded now); a failure says how much is safe in the cache."""
    from tqdm.auto import tqdm
    bar = tqdm(total=len(pairs), disable=not progress, desc=f"label [{backend.name}]", unit="pair")

    def on_new(pair: Pair, r) -> None:
        bar.update(1)
        bar.set_postfix_str(meter.postfix(), refresh=False)

    try:
        if cfg.batch.enabled:
            return _grade_batch(backend, pairs, cache, cfg, bar, summary)
        if cfg.backend in ("cascade", "judges"):  # tiers / judges cache themselves
            done = {(r.query_id, r.product_id): r for r in backend.grade(pairs, on_result=on_new)}
            summary["tiers" if cfg.backend == "cascade" else "judges"] = backend.stats  # type: ignore[attr-defined]
            return [done.get((p.query_id, p.product_id)) for p in pairs], None, None
        results, n_cached, n_new = grade_with_cache(backend, pairs, cache, on_new=on_new)
        bar.update(n_cached)
        return results, n_cached, n_new
    except LabelerError as e:
        raise LabelerError(f"{e} ({cache.count()} graded pairs are safe in {cache.path}; re-run to resume)") from e
    finally:
        bar.close()


def _calibration(valid: pd.DataFrame, ds: Dataset, held: set[str] | None, out_path: Path) -> dict[str, Any]:
    """Agreement with the human judgments, on held-out queries when the grader was fitted on the rest."""
    jud, scope = ds.judgments, "all judged pairs"
    if held is not None:
        jud = jud[jud["query_id"].isin(held)]
        scope = f"held-out queries only ({len(held)}); the grader was fitted on the others"
    try:
        rep = calibrate(valid, jud, out_dir=out_path.parent, name=out_path.stem + ".calibration")
    except ValueError as e:
        return {"skipped": str(e)}
    rep["scope"] = scope
    return {k: rep[k] for k in ("n_pairs", "accuracy", "kappa_quadratic", "spearman", "scope")}


def label_pairs(dataset_dir: str | Path, out_path: str | Path, cfg: LabelConfig | None = None,
                progress: bool = True, client: Any = None, exclude_queries: Sequence[str] = ()) -> dict:
    """Grade every candidate pair of the dataset at `dataset_dir`; write LABELS to `out_path` (parquet).

    `exclude_queries`: query ids whose human grades a grader fitted here must never learn from (the run's
    test queries); they are graded like every other query.

    Returns a summary: pairs, graded now / from cache / not graded (budget), tokens and dollars spent
    this run, cascade tier counts, and a calibration report on the judged pairs. With a Dask `client`, the
    grader (alone or as a tier) grades over partitions on the workers (`labels.distributed`)."""
    cfg = cfg or LabelConfig()
    t0 = time.perf_counter()
    out_path = Path(out_path)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = Dataset.load(dataset_dir)
    summary: dict[str, Any] = {"dataset": str(dataset_dir), "out": str(out_path), "backend": cfg.backend,
                               "prompt_version": cfg.prompt_version}
    if cfg.backend == "imported":
        return _import_only(ds, out_path, cfg, summary, t0)
    pairs = build_pairs(ds)
    held: set[str] | None = None
    grader_dir = None
    uses_grader = cfg.backend == "grader" or any(t.backend == "grader" for t in
                                                  [*(cfg.cascade.tiers if cfg.cascade else []), *cfg.judges])
    if uses_grader and not cfg.grader.dir:
        grader_dir, held = fit_grader_on_dataset(ds, out_dir, cfg, exclude=set(exclude_queries))
        seed = json.loads((grader_dir / "seed_queries.json").read_text())
        summary["grader_fitted"] = {"dir": str(grader_dir), "seed_queries": len(seed),
                                    "seed_pairs": int(ds.judgments["query_id"].isin(set(seed)).sum()),
                                    "heldout_queries": len(held), "excluded_queries": len(exclude_queries)}
    meter = CostMeter(max_dollars=cfg.max_dollars)
    cache = LabelCache(cfg.cache_path or out_dir / "label_cache.sqlite")
    try:
        backend = make_backend(cfg, meter, cache, grader_dir, client)
        summary["model"] = backend.model
        results, n_cached, n_new = _grade_all(backend, pairs, cache, meter, cfg, progress, summary)
        valid = write_table(_with_level(_labels_frame(pairs, results, pd.Timestamp.now(tz="UTC").floor("s")),
                                        ds.candidates), out_path, LABELS)
    finally:
        cache.close()
    summary.update(n_pairs=len(pairs), n_labelled=len(valid), n_not_graded=sum(r is None for r in results),
                   n_from_cache=n_cached, n_graded_now=n_new, stopped_reason=getattr(backend, "stopped_reason", None),
                   cost_this_run=meter.summary(), label_cost_total=float(valid["cost"].sum()),
                   seconds=round(time.perf_counter() - t0, 2))
    if "level" in valid.columns:
        summary["labels_per_level"] = {str(k): int(v) for k, v in valid["level"].value_counts().sort_index().items()}
    if cfg.calibrate and len(valid):
        summary["calibration"] = _calibration(valid, ds, held, out_path)
    if cfg.backend == "judges":
        from .judges import agreement
        jud = ds.judgments if held is None else ds.judgments[ds.judgments["query_id"].isin(held)]
        summary["judges_agreement"] = agreement(backend.per_judge, results,  # type: ignore[attr-defined]
                                                jud if cfg.calibrate else None)
    (out_dir / f"{out_path.stem}.summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _load_cfg(path: str | None) -> LabelConfig:
    from ltr.data.config import load_config
    return load_config(path, LabelConfig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labels.run", description="grade a dataset's candidate pairs")
    ap.add_argument("dataset")
    ap.add_argument("out", help="labels parquet to write")
    ap.add_argument("--config", help="LabelConfig as YAML (JSON is YAML too)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--batch", action="store_true", help="grade through the OpenAI Batch API (half price)")
    a = ap.parse_args(argv)
    cfg = _load_cfg(a.config)
    if a.batch:
        cfg = cfg.model_validate({**cfg.model_dump(), "batch": {**cfg.batch.model_dump(), "enabled": True}})
    s = label_pairs(a.dataset, a.out, cfg, progress=not a.no_progress)
    print(json.dumps(s, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
