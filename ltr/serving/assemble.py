"""Build the model's feature frame for (query, candidates): online store first, request-time features for
what the store lacks, NaN for the rest (engagement of never-shown pairs, as in training).

Per feature family, a row whose store values are all missing (a pair never built offline: a new query,
a new product) is computed on demand with features/ondemand.py, which uses the offline functions, so
the values match what training saw.

The serving path keeps assembled rows per (query, product) while the online store's file is unchanged
(`row_cache_rows`): every value in a row is a function of the pair and that file, so a head query's
candidates cost one lookup each instead of the store read and the request-time features (~1.2 of a ~3 ms
ranking on 2 cores). A changed file (re-materialized, truncated, replaced) keys new rows; a store that
cannot be asked (missing file) or fails to read is never cached, so degradation shows as before.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.ondemand import FAMILIES, LRUCache, OnDemandFeatures, family_of
from ltr.data.schemas import query_id

from .model import ServingError

Source = Literal["store", "ondemand", "store+ondemand", "missing"]


class FeatureAssembler:
    """features: the model's feature list (order kept); ondemand / store: either may be None."""

    def __init__(self, features: Sequence[str], ondemand: OnDemandFeatures | None = None, store: Any = None,
                 on_missing: Literal["error", "nan"] = "nan", row_cache_rows: int = 50_000) -> None:
        self.features = list(features)
        self.row_cache = LRUCache(row_cache_rows)
        if not self.features:
            raise ServingError("the model has an empty feature list. Fix: register a model logged with "
                               "ltr.tracking.log_ranker.")
        self.ondemand, self.store = ondemand, store
        store_feats: set[str] = set()
        if store is not None:
            store_feats = {r.split(":", 1)[1] for r in store.feature_refs()}
        od = set(ondemand.available(self.features)) if ondemand is not None else set()
        self.store_features = [f for f in self.features if f in store_feats]
        self.sources: dict[str, Source] = {}
        for f in self.features:
            s, o = f in store_feats, f in od
            self.sources[f] = "store+ondemand" if s and o else "store" if s else "ondemand" if o else "missing"
        self.missing = [f for f, s in self.sources.items() if s == "missing"]
        if self.missing and on_missing == "error":
            hint = []
            if any(family_of(f) == "ce" for f in self.missing):
                hint.append("pass cross_encoder=DIR (or log it as the 'cross_encoder' artifact of the model's run)")
            if any(family_of(f) == "bienc" for f in self.missing):
                hint.append("pass bi_encoder='default' or a model dir")
            if any(family_of(f) is None for f in self.missing):
                hint.append("give a features_dir whose online store holds them")
            raise ServingError(f"the model uses feature(s) {self.missing} that neither the online store nor the "
                               f"request-time features can provide. Fix: {'; '.join(hint)}; or allow them to be "
                               "NaN (on_missing='nan').")
        self._col = {f: j for j, f in enumerate(self.features)}
        self._store_cols = [self._col[f] for f in self.store_features]
        self._od_by_family: dict[str, list[str]] = {}
        for f in self.features:
            if self.sources[f] in ("ondemand", "store+ondemand"):
                self._od_by_family.setdefault(family_of(f), []).append(f)
        # per family, worked out once for `matrix`: (its columns here, those the store may fill, its columns in
        # the family's own matrix)
        self._family_cols = {fam: (np.array([self._col[f] for f in feats]),
                                   [self._col[f] for f in feats if self.sources[f] == "store+ondemand"],
                                   np.array([FAMILIES[fam].index(f) for f in feats]))
                             for fam, feats in self._od_by_family.items()}

    def describe(self) -> dict[str, Any]:
        return {"features": self.features, "sources": self.sources, "missing": self.missing}

    def warm(self) -> None:
        if self.ondemand is not None:
            self.ondemand.warm([f for fs in self._od_by_family.values() for f in fs])

    def _fill_ondemand(self, X: pd.DataFrame, pairs: pd.DataFrame, used_store: bool, progress: bool = False) -> None:
        for feats in self._od_by_family.values():
            in_store = [f for f in feats if self.sources[f] == "store+ondemand"] if used_store else []
            rows = (X[in_store].isna().all(axis=1).to_numpy() if in_store else np.ones(len(X), bool))
            if not rows.any():
                continue
            got = self.ondemand.compute(pairs.loc[rows], feats, progress=progress)
            for f in feats:
                X.loc[rows, f] = got[f].to_numpy()

    def matrix(self, query: str, product_ids: Sequence[str], docs: np.ndarray,
               skip: Sequence[str] = ()) -> tuple[np.ndarray, dict[str, Any]]:
        """The serving path: (n, features) float matrix in model order, NaN where missing, without building a
        frame. `docs`: the candidates' catalog rows (OnDemandFeatures.positions). Families in `skip` (the
        cross-encoder, which the phased ranker schedules itself) stay NaN. info: {store: ok|error|none}.
        Rows come from the row cache where the store's file is unchanged since they were assembled."""
        version = self._store_version()
        if version is None:
            return self._assemble(query, product_ids, docs, skip)
        keys = [(version, tuple(skip), query, p) for p in product_ids]
        rows = self.row_cache.get_many(keys)
        miss = [i for i, r in enumerate(rows) if r is None]
        info: dict[str, Any] = {"store": "none" if self.store is None or not self.store_features else "ok"}
        if miss:
            sub, info = self._assemble(query, [product_ids[i] for i in miss], docs[miss], skip)
            if info["store"] != "error":  # copies: a row view would keep its request's whole matrix alive
                self.row_cache.put_many((keys[i], row.copy()) for i, row in zip(miss, sub))
            for i, row in zip(miss, sub):
                rows[i] = row
        return (np.array(rows) if rows else np.zeros((0, len(self.features)))), info

    def _store_version(self) -> Any:
        """What the rows depend on besides the pair: the store file's version, "none" without a store, None
        (do not cache) when the store cannot say or its file is missing."""
        if self.store is None or not self.store_features:
            return "none"
        try:
            return self.store.online_version()
        except Exception:  # noqa: BLE001 - the read in _assemble reports it (degraded)
            return None

    def _assemble(self, query: str, product_ids: Sequence[str], docs: np.ndarray,
                  skip: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
        n = len(product_ids)
        X = np.full((n, len(self.features)), np.nan)
        info: dict[str, Any] = {"store": "none"}
        used_store = False
        if self.store is not None and self.store_features:
            try:
                X[:, self._store_cols] = self.store.online_matrix(query_id(query), list(product_ids),
                                                                  self.store_features)
                info["store"], used_store = "ok", True
            except Exception as e:  # noqa: BLE001 - degrade to request-time features, flagged in the response
                info["store"], info["store_error"] = "error", f"{type(e).__name__}: {e}"
        for fam, (cols, in_store, own) in self._family_cols.items():
            if fam in skip or not n:
                continue
            rows = np.isnan(X[:, in_store]).all(axis=1) if used_store and in_store else None
            if rows is None:  # every row: computed on demand
                X[:, cols] = self.ondemand.family_values(fam, [query] * n, docs)[:, own]
            elif rows.any():
                vals = self.ondemand.family_values(fam, [query] * int(rows.sum()), docs[rows])
                X[np.ix_(rows, cols)] = vals[:, own]
        return X, info

    def frame_pairs(self, pairs: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
        """Features for many (query text, product_id) rows at once (evaluation): batched on-demand compute,
        per-query store reads when a store is given."""
        X = pd.DataFrame(np.full((len(pairs), len(self.features)), np.nan), columns=self.features)
        pairs = pairs.reset_index(drop=True)
        used_store = False
        if self.store is not None and self.store_features:
            for q, rows in pairs.groupby("query", sort=False).groups.items():
                online = self.store.get_online_features(query_id(q), list(pairs.loc[rows, "product_id"]))
                for f in self.store_features:
                    X.loc[rows, f] = online[f].to_numpy(dtype=np.float64)
            used_store = True
        self._fill_ondemand(X, pairs, used_store, progress)
        return X


__all__ = ["FAMILIES", "FeatureAssembler"]
