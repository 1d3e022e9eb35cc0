"""DuckDB as this package's out-of-core reader: one way to open a bounded connection and to get Arrow out of it.

Why one place: every streaming reader (engagement features, per-pair counts, the bulk writer's latest rows)
must bound DuckDB's memory, work in UTC, and cope with the Arrow method names of DuckDB 1.x and 2.x.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

#: DuckDB's memory limit for our scans. Larger limits only let DuckDB keep more cached: on the 16x world (4M
#: impressions, 192k pairs) the engagement stage peaked at 767 MB RSS with 300 MB and 1,351 MB with 1 GB, at
#: the same CPU time; past the limit aggregates spill to a temporary directory.
DEFAULT_MEMORY = "320MB"


def connect(memory_limit: str = DEFAULT_MEMORY, threads: int | None = None, temp_dir: str | Path | None = None):
    """A DuckDB connection that stays inside `memory_limit` (spilling to `temp_dir`) and works in UTC."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": int(threads or os.cpu_count() or 1)})
    con.execute("SET TimeZone = 'UTC'")
    if temp_dir is not None:
        con.execute("SET temp_directory = '" + Path(temp_dir).as_posix().replace("'", "''") + "'")
    return con


def arrow_table(rel) -> pa.Table:
    """A relation's rows as an Arrow table (DuckDB 2 calls it to_arrow_table, 1.x fetch_arrow_table)."""
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()


def arrow_reader(rel, rows: int) -> pa.RecordBatchReader:
    """A relation's rows as a stream of Arrow batches of about `rows` rows, in the relation's order.

    Use `con.sql(...)` relations: a DB-API result (`con.execute`) streamed this way lost its ORDER BY in DuckDB
    2.0 when `preserve_insertion_order` was off."""
    return rel.to_arrow_reader(rows) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(rows)


def parquet_source(path: str | Path) -> str:
    """SQL for a parquet file with its row numbers (`file_row_number`), which stand in for row order."""
    quoted = Path(path).as_posix().replace("'", "''")  # a quote in a directory name must not end the literal
    return f"read_parquet('{quoted}', file_row_number = true)"


__all__ = ["DEFAULT_MEMORY", "arrow_reader", "arrow_table", "connect", "parquet_source"]
