"""Text embeddings kept on disk, keyed by a hash of the text and of the model, so a product text is embedded
once and then reused by every stage and every later run (the encoder is the platform's costliest step:
50-130 texts/s on two CPU cores).

Layout: ROOT/<model identity>/<time ns>-<random>.parquet shards with columns `key` (16-byte BLAKE2b of the
text) and `emb` (float32 vector). The identity is a digest of the model directory's weights, config and
tokenizer files plus the truncation length, so other weights or another `max_length` never answer for
these. `embed_cached` embeds the texts no shard holds in chunks and writes each chunk's shard atomically as
soon as it is done: a killed run loses at most the chunk in flight, and a re-run embeds only the rest.
Shards are only ever added; two processes sharing a cache at worst embed a text twice.

ROOT is `$LTR_EMBEDDING_CACHE` as given, else `$XDG_CACHE_HOME` (or ~/.cache) /ltr-platform/embeddings;
`LTR_EMBEDDING_CACHE=off` turns the disk cache off (`default_cache_dir()` returns None).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_MODEL_FILES = (".json", ".txt", ".safetensors", ".bin", ".model")
_DIGESTS: dict[tuple, str] = {}


def default_cache_dir() -> Path | None:
    """The cache root of this machine (see the module doc); None when turned off."""
    env = os.environ.get("LTR_EMBEDDING_CACHE")
    if env is not None and env.strip().lower() in ("off", "none", "0", ""):
        return None
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(env) if env else xdg / "ltr-platform" / "embeddings"


def model_identity(path: str | Path, max_length: int, recipe: str = "mean-l2") -> str:
    """`<dir name>-<digest of its weights, config and tokenizer files>-L<max_length>-<pooling recipe>`.

    The digest reads the files once per process (memoised by name, size and mtime), about 0.2 s for MiniLM.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _MODEL_FILES and p.name != "README.md")
    if not files:
        raise FileNotFoundError(f"{path} holds no model files (config.json, weights). Fix: pass a model directory.")
    sig = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if sig not in _DIGESTS:
        h = hashlib.blake2b(digest_size=8)
        for p in files:
            h.update(p.name.encode() + b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[sig] = h.hexdigest()
    return f"{path.name}-{_DIGESTS[sig]}-L{int(max_length)}-{recipe}"


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """The shards of one model identity under `root`; `lookup` reads only the rows asked for."""

    def __init__(self, root: str | Path, identity: str, dim: int):
        self.dir = Path(root) / identity
        self.dim = int(dim)
        self.shards_written = 0

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached embeddings of those of `texts` that some shard holds (text -> float32 vector)."""
        want: dict[bytes, str] = {text_key(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        for shard in self.shards():
            if len(found) == len(want):
                break
            try:
                keys = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
            except Exception as e:
                raise ValueError(f"embedding cache shard {shard} is unreadable ({e}). Fix: delete that file; "
                                 "its texts are embedded again.") from e
            rows = [i for i, k in enumerate(keys) if k in want and want[k] not in found]
            if not rows:
                continue
            emb = pq.read_table(shard, columns=["emb"]).column("emb").combine_chunks()
            if emb.type.list_size != self.dim:
                raise ValueError(f"embedding cache shard {shard} holds {emb.type.list_size}-d vectors, the model "
                                 f"gives {self.dim}-d. Fix: delete {self.dir}.")
            mat = emb.values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            for i in rows:
                found[want[keys[i]]] = mat[i].copy()
        return found

    def store(self, texts: Sequence[str], emb: np.ndarray) -> Path:
        """One new shard for `texts`, written to a temporary name and renamed (readers never see half a shard)."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.shape != (len(texts), self.dim):
            raise ValueError(f"{len(texts)} texts need a ({len(texts)}, {self.dim}) embedding matrix, got {emb.shape}.")
        self.dir.mkdir(parents=True, exist_ok=True)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), self.dim)
        table = pa.table({"key": pa.array([text_key(t) for t in texts], pa.binary(16)), "emb": vec})
        path = self.dir / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        self.shards_written += 1
        return path


def embed_cached(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str], cache: EmbeddingCache,
                 chunk: int = 8192, on_chunk: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embeddings (n, dim) of `texts`: cached ones read, the rest embedded `chunk` texts at a time and stored.

    Missing texts go longest first, so a chunk holds texts of similar length (less padding). `on_chunk(done,
    total)` is called after each chunk's shard is on disk (progress reporting; the resume test raises there).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}.")
    uniq = list(dict.fromkeys(texts))
    have = cache.lookup(uniq)
    missing = sorted((t for t in uniq if t not in have), key=lambda t: (-len(t), t))
    n_chunks = -(-len(missing) // chunk)
    for i in range(n_chunks):
        part = missing[i * chunk:(i + 1) * chunk]
        emb = np.asarray(embed(part), dtype=np.float32)
        cache.store(part, emb)
        have.update(zip(part, emb))
        if on_chunk is not None:
            on_chunk(i + 1, n_chunks)
    if not len(texts):
        return np.zeros((0, cache.dim), np.float32)
    return np.stack([have[t] for t in texts])


__all__ = ["EmbeddingCache", "default_cache_dir", "embed_cached", "model_identity", "text_key"]
