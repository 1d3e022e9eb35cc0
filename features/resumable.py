"""Pair scoring that survives a crash: the pairs go through a scorer in chunks, each chunk's scores are written
to a part file as soon as they exist, and a re-run skips every part already on disk.

Why: scoring 10^5-10^6 candidate pairs with a cross-encoder is hours on CPU; a run killed in its last hour
must not start again from the first pair. Parts are keyed by a fingerprint of the scorer and of the pairs
(ids and order), so parts written for other pairs or another model are discarded rather than reused.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

_STAMP = "_fingerprint"


def pairs_fingerprint(pairs: pd.DataFrame) -> str:
    """Digest of the (query_id, product_id) rows in order: which pairs, and which rows a chunk index means."""
    h = pd.util.hash_pandas_object(pairs[["query_id", "product_id"]].astype(str), index=False).to_numpy()
    return hashlib.sha1(h.tobytes()).hexdigest()[:16]


def _reset_if_stale(parts_dir: Path, key: str) -> None:
    stamp = parts_dir / _STAMP
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True)
    tmp = stamp.with_name(_STAMP + ".tmp")
    tmp.write_text(key + "\n")
    os.replace(tmp, stamp)


def score_in_chunks(pairs: pd.DataFrame, score: Callable[[pd.DataFrame], pd.DataFrame], parts_dir: str | Path,
                    scorer_id: str, chunk_rows: int = 50_000, progress: bool = False,
                    on_chunk: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """`score(chunk)` over `pairs` in chunks of `chunk_rows`, each result kept in PARTS_DIR/part-NNNNNN.parquet.

    Returns the concatenated scores in `pairs` order. scorer_id names the model (e.g. the cross-encoder's
    version): with another id or other pairs the old parts are deleted first. on_chunk(done, total) runs after
    each new part is on disk. The caller deletes `parts_dir` once it has stored the whole result.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}.")
    parts_dir = Path(parts_dir)
    pairs = pairs.reset_index(drop=True)
    _reset_if_stale(parts_dir, f"{scorer_id}|{pairs_fingerprint(pairs)}|{chunk_rows}")
    n_chunks = max(1, -(-len(pairs) // chunk_rows))
    paths = [parts_dir / f"part-{i:06d}.parquet" for i in range(n_chunks)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    skipped = sum(min(chunk_rows, len(pairs) - i * chunk_rows) for i in range(n_chunks) if i not in todo)
    bar = tqdm(total=len(pairs), initial=skipped, disable=not progress, desc="chunks", unit="pair", leave=False)
    for k, i in enumerate(todo):
        part = score(pairs.iloc[i * chunk_rows:(i + 1) * chunk_rows].reset_index(drop=True))
        tmp = paths[i].with_name(paths[i].name + ".tmp")
        part.to_parquet(tmp, index=False)
        os.replace(tmp, paths[i])
        bar.update(len(part))
        if on_chunk is not None:
            on_chunk(n_chunks - len(todo) + k + 1, n_chunks)
    bar.close()
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


__all__ = ["pairs_fingerprint", "score_in_chunks"]
