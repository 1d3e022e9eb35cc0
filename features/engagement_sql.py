"""Engagement features and per-pair counts out of core: DuckDB reads the impressions parquet, numpy finishes.

Why: the in-memory path (`features.engagement.engagement_features`) holds the whole log as one pandas frame
(about 330 bytes per impression with its string keys), so 16M impressions took 5 GB and 100M would not fit.
Here DuckDB scans the parquet file once for the position prior and once for per-(key, day) sums, spilling to
disk past `memory_limit`; what reaches Python is one row per key and day with events, streamed in key order
and turned into change-point rows a chunk of keys at a time by the very arithmetic of the in-memory path
(`change_point_rows`), then appended to the output parquet. Memory grows with the keys of a chunk, not with
the log.

Same numbers as the in-memory path: counts, rates and the position prior are exact (integer sums); the
expected clicks behind COEC are float sums taken in another order, so they agree to ~1e-12 relative
(`tests/test_scale_engagement.py` compares both on the default world). Row order is the in-memory path's:
keys in order of first appearance in the log, then day.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ltr.data.engagement import EVENT_COUNTS
from ltr.data.schemas import TableSchema

from .duckdb_io import DEFAULT_MEMORY, arrow_reader, arrow_table, connect, parquet_source
from .engagement import _BIG, change_point_rows, feature_names, position_prior

_DAY_US = 86_400 * 10**6
#: the impressions columns this module reads, and the Arrow type family each must have
_NEEDS = {"ts": pa.types.is_timestamp, "query_id": pa.types.is_string, "product_id": pa.types.is_string,
          "position": pa.types.is_integer, "clicked": pa.types.is_boolean,
          "added_to_cart": pa.types.is_boolean, "purchased": pa.types.is_boolean}
_DAY = f"floor(epoch_us(ts) / {_DAY_US})::BIGINT"
_SUMS = ("n", "cl", "atc", "pur")  # impressions, clicks, add-to-cart, purchases per (key, day)


def check_impressions_file(path: str | Path) -> int:
    """Refuse a file the SQL would misread (missing column, wrong type, nulls, position < 1); returns its rows.

    Reads only the parquet footer: column types and the writer's statistics (null counts, minimum position).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"impressions file {path} does not exist. Fix: pass DATASET/impressions.parquet.")
    meta = pq.ParquetFile(path).metadata
    schema = meta.schema.to_arrow_schema()
    for col, ok in _NEEDS.items():
        if col not in schema.names:
            raise ValueError(f"{path}: impressions column '{col}' is missing. Fix: write the log with the "
                             "IMPRESSIONS schema (ltr.data.schemas).")
        if not ok(schema.field(col).type) and not (meta.num_rows == 0 and pa.types.is_null(schema.field(col).type)):
            raise ValueError(f"{path}: impressions column '{col}' has type {schema.field(col).type}. Fix: write "
                             "the log with the IMPRESSIONS schema (ltr.data.schemas).")
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for j in range(group.num_columns):
            c = group.column(j)
            st = c.statistics
            if c.path_in_schema in _NEEDS and st is not None and st.has_null_count and st.null_count:
                raise ValueError(f"{path}: impressions column '{c.path_in_schema}' has missing values. Fix: fill "
                                 "or drop those rows.")
            if c.path_in_schema == "position" and st is not None and st.has_min_max and st.min < 1:
                raise ValueError(f"{path}: impressions column 'position' has values below 1. Fix: positions "
                                 "start at 1.")
    return meta.num_rows


def pair_counts_sql(path: str | Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None,
                    memory_limit: str = DEFAULT_MEMORY) -> pd.DataFrame:
    """`ltr.data.engagement.pair_counts` of a parquet log without loading it: the same frame, row for row."""
    path = Path(path)
    check_impressions_file(path)
    where = []
    if start is not None:
        where.append(f"ts >= '{_utc(start).isoformat()}'::TIMESTAMPTZ")
    if end is not None:
        where.append(f"ts < '{_utc(end).isoformat()}'::TIMESTAMPTZ")
    sums = ", ".join(f"sum({flag}::INTEGER)::DOUBLE AS {name}" for flag, name in EVENT_COUNTS.items())
    sql = (f"SELECT query_id, product_id, count(*)::DOUBLE AS impressions, {sums} FROM {parquet_source(path)} "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY query_id, product_id "
           "ORDER BY query_id, product_id")
    with tempfile.TemporaryDirectory(prefix="ltr-duckdb-") as tmp:
        con = connect(memory_limit, temp_dir=tmp)
        try:
            df = arrow_table(con.sql(sql)).to_pandas()
        finally:
            con.close()
    return df.astype({"query_id": object, "product_id": object})


def impressed_pairs(path: str | Path, memory_limit: str = DEFAULT_MEMORY) -> pd.DataFrame:
    """Distinct (query_id, product_id) of a parquet log in order of first appearance (what drop_duplicates keeps)."""
    path = Path(path)
    check_impressions_file(path)
    with tempfile.TemporaryDirectory(prefix="ltr-duckdb-") as tmp:
        con = connect(memory_limit, temp_dir=tmp)
        try:
            t = arrow_table(con.sql(f"SELECT query_id, product_id FROM (SELECT query_id, product_id, "
                                   f"min(file_row_number) AS r FROM {parquet_source(path)} GROUP BY ALL) ORDER BY r"))
        finally:
            con.close()
    return t.to_pandas().astype({"query_id": object, "product_id": object})


def log_time_range(path: str | Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first, last) impression time of a parquet log, from a scan of its `ts` column only."""
    con = connect("256MB")
    try:
        sql = f"SELECT epoch_us(min(ts)), epoch_us(max(ts)) FROM {parquet_source(path)}"
        lo, hi = con.execute(sql).fetchone()
    finally:
        con.close()
    if lo is None:
        raise ValueError(f"{path}: the impressions log has no rows. Fix: log at least one impression.")
    return pd.Timestamp(lo * 1000, tz="UTC"), pd.Timestamp(hi * 1000, tz="UTC")


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


@dataclass(frozen=True)
class _Prior:
    """P(click | position) up to each day (`position_prior` on DuckDB's per-(day, position) counts)."""

    days: np.ndarray
    positions: np.ndarray
    matrix: np.ndarray  # prior[day index, position index]

    def expected(self, day: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Expected clicks of (key, day) rows from their impressions per position: sum_k n_k * prior[day, k].

        Exact integer counts from DuckDB, then the same numpy sum whatever DuckDB's thread count: the bits
        never depend on how the scan was parallelised. (Joining the prior to every impression in SQL cost 3x
        the CPU and 4x the memory of these per-position counts.)"""
        return (counts * self.matrix[np.searchsorted(self.days, day)]).sum(axis=1)


def _prior(con, src: str, strength: float) -> _Prior:
    g = con.execute(f"SELECT {_DAY} AS day, position AS pos, count(*) AS size, sum(clicked::INTEGER) AS sum "
                    f"FROM {src} GROUP BY ALL").df().set_index(["day", "pos"]).sort_index()
    days, positions, prior = position_prior(g, strength)
    return _Prior(days.to_numpy(np.int64), positions.to_numpy(np.int64), prior)


def _daily_tables(con, src: str, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-(pair, day) and per-(product, day) sums, with impressions per position, as temp tables; returns
    the global (days, cumulative sums of impressions, clicks, add-to-cart, purchases)."""
    per_pos = ", ".join(f"count(*) FILTER (WHERE position = {int(p)}) AS np{j}" for j, p in enumerate(positions))
    con.execute(f"""CREATE TEMP TABLE qp_day AS SELECT query_id, product_id, {_DAY} AS day, count(*) AS n,
        sum(clicked::INTEGER) AS cl, sum(added_to_cart::INTEGER) AS atc, sum(purchased::INTEGER) AS pur,
        min(file_row_number) AS r, {per_pos} FROM {src} GROUP BY ALL""")
    pos_sums = ", ".join(f"sum(np{j}) AS np{j}" for j in range(len(positions)))
    con.execute(f"""CREATE TEMP TABLE p_day AS SELECT product_id, day, sum(n) AS n, sum(cl) AS cl, sum(atc) AS atc,
        sum(pur) AS pur, min(r) AS r, {pos_sums} FROM qp_day GROUP BY ALL""")
    g = con.execute("SELECT day, sum(n), sum(cl), sum(atc), sum(pur) FROM qp_day GROUP BY day ORDER BY day")
    g = g.fetchnumpy()
    tot = np.column_stack([np.asarray(g[k], dtype=np.float64) for k in list(g)[1:]])
    return np.asarray(g["day"], dtype=np.int64), np.vstack([np.zeros((1, 4)), np.cumsum(tot, axis=0)])


def _key_batches(con, table: str, keys: list[str], n_pos: int, rows: int
                 ) -> tuple[pa.Table, Iterator[pa.RecordBatch]]:
    """The key table (row i = key of code i, codes in order of first appearance) and a stream of
    (code, day, sums, impressions per position) batches in (code, day) order."""
    k = ", ".join(keys)
    con.execute(f"CREATE TEMP TABLE {table}_keys AS SELECT {k}, (row_number() OVER (ORDER BY r) - 1)::BIGINT "
                f"AS code FROM (SELECT {k}, min(r) AS r FROM {table} GROUP BY ALL)")
    key_table = arrow_table(con.sql(f"SELECT {k} FROM {table}_keys ORDER BY code"))
    cols = ", ".join(f"d.{c}::DOUBLE AS {c}" for c in [*_SUMS, *(f"np{j}" for j in range(n_pos))])
    res = con.sql(f"SELECT c.code, d.day, {cols} FROM {table} AS d JOIN {table}_keys AS c USING ({k}) "
                  "ORDER BY c.code, d.day")
    return key_table, iter(arrow_reader(res, rows))


def _whole_keys(batches: Iterator[pa.RecordBatch]) -> Iterator[pd.DataFrame]:
    """Re-cut a (code, day)-ordered stream so that no key is split between two chunks."""
    carry: pd.DataFrame | None = None
    for b in batches:
        df = b.to_pandas()
        if carry is not None:
            df = pd.concat([carry, df], ignore_index=True)
        if df.empty:
            continue
        code = df["code"].to_numpy()
        if (np.diff(code) < 0).any():  # a key split between chunks would be written twice: never let it pass
            raise RuntimeError("DuckDB returned key-day rows out of (code, day) order; the engagement features "
                               "cannot be streamed. Fix: upgrade duckdb or use features.engagement.")
        last = code[-1]
        cut = int(np.searchsorted(code, last, side="left"))
        carry = df.iloc[cut:]
        if cut:
            yield df.iloc[:cut]
    if carry is not None and len(carry):
        yield carry


class _ParquetSink:
    """Chunks appended to OUT.tmp, renamed to OUT at the end: a crash never leaves half a file.

    The first chunk goes through the table schema's validation (types, nulls, unique keys) and fixes the
    file's Arrow schema; every later chunk is cast to it (the writer refuses anything else), and keys cannot
    repeat across chunks because each key lives in one chunk. Validating every chunk in pandas cost a third
    of the stage's time."""

    def __init__(self, path: Path, schema: TableSchema, where: str):
        self.path, self.schema, self.where = path, schema, where
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, t: pa.Table) -> None:
        if self.writer is None:
            valid = self.schema.validate(t.to_pandas(), where=self.where)
            t = pa.Table.from_pandas(valid, preserve_index=False).replace_schema_metadata(None)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, t.schema, compression="zstd")
        self.writer.write_table(t.cast(self.writer.schema))
        self.rows += len(t)

    def close(self, empty: pd.DataFrame) -> int:
        if self.writer is None:
            self.write(pa.Table.from_pandas(empty, preserve_index=False))
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.rows


def _write_view(con, table: str, keys: list[str], prefix: str, windows: list[int], globals_: tuple,
                prior: _Prior, smoothing: float, sink: _ParquetSink, chunk_rows: int) -> int:
    key_table, batches = _key_batches(con, table, keys, len(prior.positions), chunk_rows)
    g_days, g_cum = globals_
    per_pos = [f"np{j}" for j in range(len(prior.positions))]
    for chunk in _whole_keys(batches):
        code, day = chunk["code"].to_numpy(np.int64), chunk["day"].to_numpy(np.int64)
        uniq = code * _BIG + day
        expected = prior.expected(day, chunk[per_pos].to_numpy(np.float64))
        daily = np.column_stack([chunk[list(_SUMS)].to_numpy(np.float64), expected])
        cp_code, cp_day, feats = change_point_rows(uniq, daily, windows, g_days, g_cum, smoothing, prefix)
        cols = {k: v.cast(pa.string()) for k, v in zip(keys, key_table.take(pa.array(cp_code)).columns)}
        cols["event_timestamp"] = pa.array(cp_day * _DAY_US).cast(pa.timestamp("us", tz="UTC"))
        cols.update((f, pa.array(v, from_pandas=True)) for f, v in feats.items())
        sink.write(pa.table(cols))
    return sink.close(_empty(keys, prefix, windows))


def _empty(keys: list[str], prefix: str, windows: list[int]) -> pd.DataFrame:
    """A view's columns without rows, so an empty log still writes readable, typed sources."""
    empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in keys})
    empty["event_timestamp"] = pd.Series([], dtype="datetime64[us, UTC]")
    return pd.concat([empty, pd.DataFrame({f: pd.Series([], dtype="float64")
                                           for f in feature_names(prefix, windows)})], axis=1)


def engagement_features_parquet(impressions: str | Path, qp_out: str | Path, p_out: str | Path,
                                qp_schema: TableSchema, p_schema: TableSchema, windows=(7, 28),
                                smoothing: float = 10.0, position_prior_strength: float = 10.0,
                                memory_limit: str = DEFAULT_MEMORY, chunk_rows: int = 100_000,
                                threads: int | None = None) -> dict[str, int]:
    """`engagement_features` of a parquet log, written to `qp_out` and `p_out` (validated by the two schemas).

    Returns the rows written per view. `memory_limit` bounds DuckDB (it spills to a temporary directory
    beside the outputs past it); `chunk_rows` (key-days per chunk) bounds the numpy side. `threads`: DuckDB's
    (default: every core); the outputs are the same bits whatever it is.
    """
    windows = sorted(int(w) for w in windows)
    if not windows or any(w < 1 for w in windows):
        raise ValueError(f"windows must be positive day counts, got {windows}. Fix: e.g. windows=[7, 28].")
    path, qp_out, p_out = Path(impressions), Path(qp_out), Path(p_out)
    qp_sink = _ParquetSink(qp_out, qp_schema, "engagement qp")
    p_sink = _ParquetSink(p_out, p_schema, "engagement product")
    if check_impressions_file(path) == 0:
        return {"engagement_qp": qp_sink.close(_empty(["query_id", "product_id"], "eng_qp", windows)),
                "engagement_product": p_sink.close(_empty(["product_id"], "eng_p", windows))}
    qp_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".duckdb-", dir=qp_out.parent))
    con = connect(memory_limit, threads, temp_dir=tmp)
    try:
        src = parquet_source(path)
        prior = _prior(con, src, position_prior_strength)
        globals_ = _daily_tables(con, src, prior.positions)
        rows = {"engagement_qp": _write_view(con, "qp_day", ["query_id", "product_id"], "eng_qp", windows, globals_,
                                             prior, smoothing, qp_sink, chunk_rows),
                "engagement_product": _write_view(con, "p_day", ["product_id"], "eng_p", windows, globals_, prior,
                                                  smoothing, p_sink, chunk_rows)}
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


__all__ = ["check_impressions_file", "engagement_features_parquet", "impressed_pairs", "log_time_range",
           "pair_counts_sql"]
