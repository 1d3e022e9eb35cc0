"""Feast glue: one store per run, definitions from `feature_repo/`, data from the run's parquet files.

    store = LtrStore(features_dir, cfg)      # features_dir: what build_features wrote
    store.apply()                            # registry + online tables
    store.materialize()                      # Feast's own path (offline DuckDB -> online)
    store.bulk_materialize()                 # our faster path: same rows, same online format
    store.get_training_frame(entity_df)      # point-in-time features + labels, one call
    store.get_online_features(qid, pids)     # 100 candidates in one call

The repo config is rendered into STORE_DIR/feature_store.yaml (DuckDB offline store: Feast's
`file` store drops entity rows without a match; SQLite online store by default, Redis optional), so
`feast -c STORE_DIR ...` works on a run as well.

Why a bulk path: Feast's materialize upserts row by row in Python (~3k rows/s into SQLite here);
`bulk_materialize` hands the views to `features.online_writer.OnlineWriter`, which writes the same bytes in
bulk and refuses, before writing anything, the Feast settings whose layout it does not reproduce. Online reads
of the SQLite store go through `features.online_reader.SqliteReader` (built to survive a store file that is
moved, truncated or locked under a running service); `fast=False` (or Redis) goes through Feast's reader.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .config import FeaturesConfig
from .online_reader import SqliteReader
from .online_writer import FeatureStoreError, OnlineWriter, fast_read_supported

__all__ = ["FeatureStoreError", "LtrStore", "load_repo_module", "render_store_config", "write_manifest"]

REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"
EPOCH_START = datetime(1970, 1, 2, tzinfo=UTC)


def load_repo_module():
    """Import feature_repo/ltr_repo.py by path (feature_repo/ is a Feast repo, not a package)."""
    name = "ltr_feature_repo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_DIR / "ltr_repo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def render_store_config(store_dir: Path, cfg: FeaturesConfig) -> Path:
    """Write STORE_DIR/feature_store.yaml for this run and return its directory.

    Rendered from the run's FeaturesConfig on every LtrStore, so the Feast CLI and this module never disagree;
    written to a temporary name and renamed, so a concurrent `feast -c STORE_DIR` never reads half a file.
    """
    store_dir = Path(store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    if cfg.online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": cfg.redis.connection_string}
    else:
        online = {"type": "sqlite", "path": str(store_dir / "online.db")}
    conf = {
        "project": cfg.project, "provider": "local", "registry": str(store_dir / "registry.db"),
        "offline_store": {"type": "duckdb"}, "online_store": online,
        "entity_key_serialization_version": 3,
    }
    tmp = store_dir / "feature_store.yaml.tmp"
    tmp.write_text(yaml.safe_dump(conf, sort_keys=False))
    tmp.replace(store_dir / "feature_store.yaml")
    return store_dir


class LtrStore:
    """A Feast store for one run: parquet sources in `features_dir`, registry + online store in `store_dir`."""

    def __init__(self, features_dir: str | Path, cfg: FeaturesConfig | None = None,
                 store_dir: str | Path | None = None):
        from feast import FeatureStore

        self.cfg = cfg or FeaturesConfig()
        self.features_dir = Path(features_dir).resolve()
        if not self.features_dir.is_dir():
            raise FeatureStoreError(f"features_dir {self.features_dir} does not exist. Fix: run "
                                    "features.build.build_features(dataset_dir, out_dir) first.")
        self.store_dir = render_store_config(Path(store_dir) if store_dir else self.features_dir / "feast",
                                             self.cfg)
        self.repo = load_repo_module()
        self.fs = FeatureStore(repo_path=str(self.store_dir))
        self.views = self._present_views()
        self._reader: SqliteReader | None = None
        self._plans: dict[tuple[str, ...], Any] = {}
        self.objects = self.repo.definitions(self.features_dir, self.cfg.windows_days, views=self.views,
                                             labeler_priority=self.cfg.labeler_priority)

    # -- setup -----------------------------------------------------------------------------------------
    def _present_views(self) -> list[str]:
        names = self.repo.view_features(self.cfg.windows_days)
        return [v for v in names if (self.features_dir / f"{v}.parquet").exists()]

    @property
    def has_labels(self) -> bool:
        return (self.features_dir / f"{self.repo.LABEL_VIEW}.parquet").exists()

    def apply(self) -> LtrStore:
        """Register entities, views, the label view and the services; create the online tables."""
        if not self.views:
            raise FeatureStoreError(f"no feature parquet files in {self.features_dir}. Fix: run build_features "
                                    "into this directory first.")
        objs = [o for k, o in self.objects.items() if k != self.repo.LABEL_VIEW or self.has_labels]
        if not self.has_labels:
            from feast import FeatureService
            fvs = [self.objects[v] for v in self.views]
            objs = [o for o in objs if not isinstance(o, FeatureService)]
            objs += [FeatureService(name="training", features=fvs), FeatureService(name="serving", features=fvs)]
        self.fs.apply(objs)
        return self

    # -- online loading ----------------------------------------------------------------------------------
    def materialize(self, start: datetime | None = None, end: datetime | None = None,
                    views: Iterable[str] | None = None) -> None:
        """Feast's own materialize (DuckDB offline store -> online store) over [start, end)."""
        self.fs.materialize(start_date=start or EPOCH_START, end_date=end or datetime.now(UTC),
                            feature_views=list(views or self.views))

    def bulk_materialize(self, views: Iterable[str] | None = None, batch_rows: int | None = None,
                         progress: bool = True) -> dict[str, int]:
        """Write the latest row per entity of each view straight into the online store; rows per view.

        Produces the same online contents as `materialize()` over all time (tested), much faster. Checks every
        view and Feast setting first, so a refusal (FeatureStoreError) leaves the online store untouched.
        """
        names = list(views or self.views)
        absent = [v for v in names if v not in self.views]
        if absent:
            raise FeatureStoreError(f"view(s) {absent} have no parquet source in {self.features_dir}. "
                                    f"Fix: choose from {self.views}.")
        return OnlineWriter(self.fs, batch_rows or self.cfg.bulk_batch_rows).write(names, progress)

    # -- retrieval ---------------------------------------------------------------------------------------
    def feature_refs(self, views: Iterable[str] | None = None, labels: bool = False) -> list[str]:
        feats = self.repo.view_features(self.cfg.windows_days)
        refs = [f"{v}:{f}" for v in (views or self.views) for f in feats[v]]
        if labels and self.has_labels:
            refs += [f"{self.repo.LABEL_VIEW}:{f}" for f in self.repo.LABEL_FIELDS]
        return refs

    def get_training_frame(self, entity_df: pd.DataFrame, labels: bool = True,
                           views: Iterable[str] | None = None) -> pd.DataFrame:
        """Point-in-time features (and labels) for each (query_id, product_id, event_timestamp) row.

        Every input row comes back (missing features are NaN, not dropped), in the input order.
        """
        need = ["query_id", "product_id", "event_timestamp"]
        missing = [c for c in need if c not in entity_df.columns]
        if missing:
            raise FeatureStoreError(f"entity_df lacks column(s) {missing}. Fix: pass query_id, product_id and "
                                    "event_timestamp (the time as of which features are wanted).")
        ent = entity_df.copy()
        ts = ent["event_timestamp"]
        if not pd.api.types.is_datetime64_any_dtype(ts):
            raise FeatureStoreError("entity_df.event_timestamp must be a timestamp column. Fix: "
                                    "pd.to_datetime(df['event_timestamp'], utc=True).")
        ent["event_timestamp"] = pd.to_datetime(ts, utc=True)
        ent["_row"] = np.arange(len(ent))
        out = self.fs.get_historical_features(entity_df=ent, features=self.feature_refs(views, labels)).to_df()
        out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
        if len(out) != len(ent):  # the DuckDB store keeps every entity row; fail loudly if that ever changes
            raise FeatureStoreError(f"point-in-time join returned {len(out)} rows for {len(ent)} entity rows")
        for c in out.columns:
            if c not in entity_df.columns and c not in ("labeler", "labeler_kind"):
                out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
        return out

    def get_online_features(self, query_id: str, product_ids: list[str],
                            views: Iterable[str] | None = None, fast: bool = True) -> pd.DataFrame:
        """Online features for one query's candidates in one call; rows in `product_ids` order, NaN if absent.

        With SQLite and fast=True the rows Feast stored are read with one SELECT per view and decoded
        vectorised (Feast's generic reader spends ~0.15 ms per entity in Python); values are identical
        to Feast's reader (tested). fast=False, Redis, or versioned table names go through
        `FeatureStore.get_online_features`.
        """
        if not isinstance(query_id, str) or not query_id:
            raise FeatureStoreError("query_id must be a non-empty string (see ltr.data.schemas.query_id).")
        if not product_ids:
            raise FeatureStoreError("product_ids is empty. Fix: pass the candidate product ids to score.")
        if fast and fast_read_supported(self.fs.config):
            feats = self.repo.view_features(self.cfg.windows_days)
            wanted = {v: (self.repo.VIEW_KEYS[v], feats[v]) for v in (views or self.views)}
            pids = [str(p) for p in product_ids]
            mats = self._fast_reader().read(query_id, pids, wanted)
            cols = {f: m[:, j] for v, m in mats.items() for j, f in enumerate(wanted[v][1])}
            return pd.DataFrame({"query_id": [query_id] * len(pids), "product_id": pids, **cols})
        rows = [{"query_id": query_id, "product_id": str(p)} for p in product_ids]
        refs = self.feature_refs(views)
        res = self.fs.get_online_features(features=refs, entity_rows=rows).to_df()
        res = res[["query_id", "product_id"] + [r.split(":", 1)[1] for r in refs]]
        for c in res.columns:
            if c not in ("query_id", "product_id"):
                res[c] = pd.to_numeric(res[c], errors="coerce").astype("float64")
        return res

    def online_matrix(self, query_id: str, product_ids: list[str], features: list[str]) -> np.ndarray:
        """The serving read: `features` (all served by this store) for each candidate, as a float matrix in
        `product_ids` order, NaN where absent; no frame is built on the fast path."""
        plan = self._matrix_plan(tuple(features))
        if plan is None:
            return self.get_online_features(query_id, product_ids, fast=False)[features].to_numpy(np.float64)
        wanted, cols = plan
        out = np.full((len(product_ids), len(features)), np.nan)
        for v, m in self._fast_reader().read(query_id, [str(p) for p in product_ids], wanted).items():
            out[:, cols[v]] = m
        return out

    def online_version(self) -> tuple | None:
        """What the online values depend on, as cheap to ask as one stat of the file: a caller may keep values
        read while it is unchanged (the service's row cache). None: this store cannot say (Redis, versioned
        tables). Raises FeatureStoreError when the file is missing."""
        if not fast_read_supported(self.fs.config):
            return None
        return self._fast_reader().version()

    def _matrix_plan(self, features: tuple[str, ...]) -> tuple[dict, dict[str, list[int]]] | None:
        """Per view, its features among `features` and their columns in the output (None: no fast read), worked
        out once per feature list: the service asks with the same list on every request."""
        if features not in self._plans:
            plan = None
            if fast_read_supported(self.fs.config):
                feats, col = self.repo.view_features(self.cfg.windows_days), {f: j for j, f in enumerate(features)}
                wanted = {v: (self.repo.VIEW_KEYS[v], [f for f in feats[v] if f in col]) for v in self.views}
                wanted = {v: w for v, w in wanted.items() if w[1]}
                plan = wanted, {v: [col[f] for f in w[1]] for v, w in wanted.items()}
            self._plans[features] = plan
        return self._plans[features]

    def _fast_reader(self) -> SqliteReader:
        """One reader per store: its open connection and page cache are what make repeated reads cheap."""
        if self._reader is None:
            self._reader = SqliteReader(self.fs.config, self.cfg.sqlite_read_mmap_mb)
        return self._reader


def write_manifest(features_dir: Path, info: dict[str, Any]) -> None:
    """Written to a temporary name and renamed, so a crashed build never leaves half a manifest behind."""
    tmp = Path(features_dir) / "manifest.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(Path(features_dir) / "manifest.json")

