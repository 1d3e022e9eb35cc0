"""The serving read of Feast's SQLite online store: one query's candidates, one SELECT per view.

Why not Feast's reader: it spends ~0.15 ms per entity in Python; here rows are fetched in one statement per
view and decoded vectorised (values identical to Feast's reader, tested).

Why it is careful: it runs inside a service whose store file can be rebuilt, moved, truncated, corrupted or
locked while requests keep coming. So
  - no memory map unless asked (`mmap_mb`): a mapped file that is truncated underneath kills the process
    with SIGBUS, which no exception handler sees;
  - a short busy timeout: a locked file fails this read in milliseconds instead of stalling the request;
  - the file's identity (device, inode) is checked on every read: a moved or replaced file is noticed and
    the connection reopened, a missing one is an error;
  - any failure closes the connection, so the next read starts fresh and the store recovers by itself when
    the file is back. The caller decides what a failure means (the service degrades to request-time features).

Why it caches: Feast keeps one row per (entity, feature), so 100 candidates are ~1,600 rows per view to fetch
and decode (~40 ms a request over five views here). Decoded rows are kept per view, `cache_entries` at most
(oldest out first; absent entities included, as NaN rows) and the whole cache is dropped whenever the
file changes (its size, modification time or identity), so a re-materialized store is read afresh.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .online_writer import FeatureStoreError, decode_values, encode_key_columns, sqlite_path

ViewSpec = dict[str, tuple[list[str], list[str]]]  # view -> (join keys, features)


class SqliteReader:
    """Reads candidates' feature values from the tables Feast's SQLite online store holds."""

    def __init__(self, config: Any, mmap_mb: int = 0, busy_timeout_s: float = 0.05, cache_entries: int = 50_000):
        self.db, self.project = sqlite_path(config), config.project
        self.mmap_mb, self.busy_timeout_s, self.cache_entries = mmap_mb, busy_timeout_s, cache_entries
        self._con: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
        self._version: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) the cache belongs to
        self._cache: dict[tuple[str, tuple[str, ...]], OrderedDict[tuple[str, ...], np.ndarray]] = {}
        self._lock = threading.Lock()  # one connection and one cache, many request threads

    def close(self) -> None:
        self._cache.clear()
        if self._con is not None:
            try:
                self._con.close()
            finally:
                self._con, self._ident = None, None

    def _connection(self) -> sqlite3.Connection:
        try:
            st = os.stat(self.db)
        except FileNotFoundError:
            self.close()
            raise FeatureStoreError(f"online store file {self.db.name} is missing (moved or deleted). Fix: put it "
                                    "back or rebuild it (apply + materialize); reads resume by themselves.") from None
        if self._con is not None and (st.st_dev, st.st_ino) != self._ident:
            self.close()  # replaced under us: read the new file, not the old handle
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if version != self._version:
            self._cache.clear()  # written, truncated or replaced: cached rows may be stale
            self._version = version
        if self._con is None:
            con = sqlite3.connect(f"{Path(self.db).as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                  timeout=self.busy_timeout_s)
            if self.mmap_mb:
                con.execute(f"PRAGMA mmap_size={self.mmap_mb << 20}")
            con.execute("PRAGMA cache_size=-65536")
            self._con, self._ident = con, (st.st_dev, st.st_ino)
        return self._con

    def version(self) -> tuple[int, int, int, int]:
        """The file's (device, inode, size, mtime) now: values read from it stay valid while this is unchanged
        (one stat). Raises FeatureStoreError when the file is missing."""
        with self._lock:
            self._connection()
            return self._version

    def _fetch(self, view: str, keys: list[bytes], feats: list[str]) -> np.ndarray:
        """Rows of `keys` from the file (caller holds the lock), decoded into a (keys, feats) matrix."""
        sql = (f'SELECT entity_key, feature_name, value FROM "{self.project}_{view}" '
               f"WHERE entity_key IN ({','.join('?' * len(keys))})")
        try:
            got = self._connection().execute(sql, keys).fetchall()
        except sqlite3.Error as e:
            self.close()
            raise FeatureStoreError(f"online store read failed ({type(e).__name__}: {e}). Fix: check the "
                                    "store file (rebuild with materialize if it is damaged).") from None
        kpos = {k: i for i, k in enumerate(keys)}
        fpos = {f: j for j, f in enumerate(feats)}
        mat = np.full((len(keys), len(feats)), np.nan)
        if got:
            ks, fs, vs = zip(*got)
            ri = np.fromiter((kpos[k] for k in ks), dtype=np.int64, count=len(ks))
            ci = np.fromiter((fpos.get(f, -1) for f in fs), dtype=np.int64, count=len(fs))
            ok = ci >= 0
            mat[ri[ok], ci[ok]] = decode_values(list(vs))[ok]
        return mat

    def _view_matrix(self, view: str, keys: list[tuple[str, ...]], feats: list[str],
                     join_keys: list[str]) -> np.ndarray:
        """Values of `feats` for each entity (a tuple of its join key values; NaN where absent): cached rows,
        then one SELECT for the rest (caller holds the lock and has checked the file). The cache is keyed by
        the values, so a warm request encodes no key."""
        cache = self._cache.setdefault((view, tuple(feats)), OrderedDict())
        rows = [cache.get(k) for k in keys]
        todo = list(dict.fromkeys(k for k, r in zip(keys, rows) if r is None))
        if todo:
            ek = encode_key_columns({j: [t[i] for t in todo] for i, j in enumerate(join_keys)})
            fresh = dict(zip(todo, self._fetch(view, ek, feats)))
            rows = [fresh[k] if r is None else r for k, r in zip(keys, rows)]
            cache.update(fresh)
            while len(cache) > self.cache_entries:
                cache.popitem(last=False)
        return np.array(rows) if rows else np.zeros((0, len(feats)))  # np.array: a third of np.stack's cost

    def read(self, query_id: str, product_ids: list[str], views: ViewSpec) -> dict[str, np.ndarray]:
        """View -> (len(product_ids), its features) matrix in `product_ids` order, NaN where the store has no
        row. The file is checked once per read, not once per view."""
        values = {"query_id": [query_id] * len(product_ids), "product_id": product_ids}
        with self._lock:
            self._connection()  # checks the file; clears the cache if it changed
            return {v: self._view_matrix(v, list(zip(*(values[k] for k in keys))), feats, list(keys))
                    for v, (keys, feats) in views.items()}


__all__ = ["SqliteReader"]
