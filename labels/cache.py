"""SQLite label cache: one row committed per graded pair, the moment it returns.

Key = (backend, model, prompt_version, query, product-text hash). A killed run resumes from here and
never pays twice for a stored pair; a changed product text or prompt version is a different key. An
LLM backend's output mode (JSON schema, samples, ...) is in its backend name, so a grade obtained one way
never answers for another, while the plain chat+logprobs mode keeps the name `openai` and older caches.
`output_mode` (how the distribution was obtained) is stored beside each row; caches from before it was
added get the column on open, NULL for their rows.
WAL mode so a reader (a progress report, a second process) never blocks the writer, and a crash
mid-write leaves the last committed row intact.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from ltr.data.schemas import normalize_query

from .backends.base import LabelResult, Pair

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL, model TEXT NOT NULL, prompt_version TEXT NOT NULL,
    query TEXT NOT NULL, text_hash TEXT NOT NULL,
    query_id TEXT NOT NULL, product_id TEXT NOT NULL,
    p0 REAL NOT NULL, p1 REAL NOT NULL, p2 REAL NOT NULL, p3 REAL NOT NULL,
    hard_grade INTEGER,
    tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, cost REAL NOT NULL,
    created_at REAL NOT NULL,
    output_mode TEXT
)"""
_COLUMNS = ("key", "backend", "model", "prompt_version", "query", "text_hash", "query_id", "product_id",
            "p0", "p1", "p2", "p3", "hard_grade", "tokens_in", "tokens_out", "cost", "created_at", "output_mode")


def cache_key(backend: str, model: str, prompt_version: str, query: str, text_hash: str) -> str:
    raw = "\x1f".join((backend, model, prompt_version, normalize_query(query), text_hash))
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()


class LabelCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(labels)")}
            if "output_mode" not in have:  # a cache written before output modes existed
                self._db.execute("ALTER TABLE labels ADD COLUMN output_mode TEXT")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"label cache {self.path} is not a usable SQLite database ({e}). Fix: point "
                             "cache_path at a new file, or delete this one to re-grade.") from e

    def key(self, backend: str, model: str, prompt_version: str, pair: Pair) -> str:
        return cache_key(backend, model, prompt_version, pair.query, pair.text_hash)

    def get_many(self, backend: str, model: str, prompt_version: str, pairs: Iterable[Pair]
                 ) -> dict[str, LabelResult]:
        """Cached results by cache key, re-addressed to each pair's own query_id/product_id."""
        by_key: dict[str, list[Pair]] = {}
        for p in pairs:
            by_key.setdefault(self.key(backend, model, prompt_version, p), []).append(p)
        out: dict[str, LabelResult] = {}
        keys = list(by_key)
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, p0, p1, p2, p3, hard_grade, tokens_in, tokens_out, cost, output_mode FROM " \
                    f"labels WHERE key IN ({','.join('?' * len(chunk))})"
                for k, p0, p1, p2, p3, hg, ti, to, c, om in self._db.execute(q, chunk):
                    pr = by_key[k][0]
                    out[k] = LabelResult(pr.query_id, pr.product_id, (p0, p1, p2, p3), backend, model,
                                            prompt_version, ti, to, c, hg, output_mode=om)
        return out

    def put(self, pair: Pair, r: LabelResult) -> None:
        """Commit one graded pair now (INSERT OR IGNORE: the first stored grade wins)."""
        self.put_fields(pair.query, pair.text_hash, pair.query_id, pair.product_id, r)

    def put_fields(self, query: str, text_hash: str, query_id: str, product_id: str, r: LabelResult) -> None:
        """`put` for a pair known only by its stored fields (a Batch API result whose dataset row is gone)."""
        k = cache_key(r.backend, r.model, r.prompt_version, query, text_hash)
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO labels ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                (k, r.backend, r.model, r.prompt_version, normalize_query(query), text_hash, query_id, product_id,
                 *r.probs, r.hard_grade, r.tokens_in, r.tokens_out, r.cost, time.time(), r.output_mode))
            self._db.commit()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0])

    def created_at(self, keys: Iterable[str]) -> dict[str, float]:
        keys = list(keys)
        out: dict[str, float] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, created_at FROM labels WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(dict(self._db.execute(q, chunk).fetchall()))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "LabelCache":
        return self

    def __exit__(self, *a) -> None:
        self.close()


def grade_with_cache(backend, pairs: list[Pair], cache: LabelCache | None, on_new=None
                     ) -> tuple[list[LabelResult | None], int, int]:
    """Grade `pairs` through `backend`, serving stored grades from `cache` and committing each new grade
    the moment it returns. Returns (results aligned with pairs, None where not graded, n_cached, n_new).
    Identical content (same query text and product text) is graded once and shared."""
    results: list[LabelResult | None] = [None] * len(pairs)
    keyf = (lambda p: cache.key(backend.name, backend.model, backend.prompt_version, p)) if cache else \
        (lambda p: cache_key(backend.name, backend.model, backend.prompt_version, p.query, p.text_hash))
    keys = [keyf(p) for p in pairs]
    hit = cache.get_many(backend.name, backend.model, backend.prompt_version, pairs) if cache else {}
    todo: dict[str, Pair] = {}
    for k, p in zip(keys, pairs):
        if k not in hit and k not in todo:
            todo[k] = p
    fresh: dict[str, LabelResult] = {}

    def commit(pair: Pair, r: LabelResult) -> None:
        if cache is not None:
            cache.put(pair, r)
        fresh[keyf(pair)] = r
        if on_new:
            on_new(pair, r)

    try:
        if todo:
            backend.grade(list(todo.values()), on_result=commit)
    finally:
        for i, (k, p) in enumerate(zip(keys, pairs)):
            r = hit.get(k) or fresh.get(k)
            if r is not None:  # re-addressed to this pair; a subclass keeps its own fields (output_mode)
                results[i] = dataclasses.replace(r, query_id=p.query_id, product_id=p.product_id)
    n_cached = sum(1 for k in keys if k in hit)
    return results, n_cached, len(fresh)
