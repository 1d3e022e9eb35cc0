"""Feast's online byte layout, reproduced: a bulk writer for the SQLite and Redis online stores, a fast SQLite reader.

Why it exists: Feast's materialize converts every cell to a protobuf in Python and upserts row by row (~3k rows/s
into SQLite here). `OnlineWriter` takes the latest row per entity straight from a view's parquet source,
serializes keys and float values vectorised into exactly the bytes Feast writes, and writes one batch at a time
(SQLite: a staged INSERT ... SELECT, so SQLite expands entities into Feast's row-per-feature layout itself;
Redis: all of a batch's commands packed by hiredis and sent in one write, as `redis-cli --pipe` does).
Its reading counterpart for serving is `features.online_reader.SqliteReader`.

Why it refuses so much: it reproduces one layout, not Feast's writer. It knows entity key serialization v3,
string join keys, Float64 features, file sources holding exactly the view's columns, table and hash-field names
without a version suffix, keys that never expire, and one plain Redis node. `OnlineWriter.plan` checks the live
Feast config and registry against that before a byte is written, so a Feast setting it would not honour fails
with a `FeatureStoreError` naming the setting instead of leaving a store that Feast reads differently. Its
encoders are compared with Feast's own serializers on every run for the same reason.
"""
from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

FIX = "Fix: use LtrStore.materialize (Feast's own writer) or remove the setting."


class FeatureStoreError(ValueError):
    """Input or a setting the store cannot use. A ValueError, so callers' bad-input handling catches it; the
    message always names the field or setting and the fix. Defined here, the lowest layer, and re-exported by
    features.store, so both modules raise the one class without importing each other."""


def _refuse(setting: str, why: str) -> FeatureStoreError:
    return FeatureStoreError(f"bulk_materialize does not honour {setting}: {why}. {FIX}")


# --- byte-level encoders, identical to Feast's (verified before every bulk run by check_encoders) -------------
_STRING_TYPE = 2  # feast ValueType.STRING
_DOUBLE_TAG = 0x29  # ValueProto field 5 (double_val), wire type 1 (64-bit)


def _entity_key_prefix(join_keys: list[str]) -> bytes:
    out = [struct.pack("<I", len(join_keys))]
    for k in sorted(join_keys):
        kb = k.encode("utf8")
        out += [struct.pack("<I", _STRING_TYPE), struct.pack("<I", len(kb)), kb]
    return b"".join(out)


def encode_entity_keys(df: pd.DataFrame, join_keys: list[str]) -> list[bytes]:
    """Feast v3 serialized entity keys of string join keys (sorted by key name), one per row."""
    return encode_key_columns({k: df[k].astype(str).tolist() for k in join_keys})


def encode_key_columns(columns: dict[str, list[str]]) -> list[bytes]:
    """`encode_entity_keys` without a DataFrame, for the read path where building one costs more than the SELECT."""
    prefix = _entity_key_prefix(list(columns))
    head = struct.pack("<I", _STRING_TYPE)
    cols = [[(head + struct.pack("<I", len(b)) + b) for b in (v.encode("utf8") for v in columns[k])]
            for k in sorted(columns)]
    if len(cols) == 1:
        return [prefix + a for a in cols[0]]
    return [prefix + b"".join(parts) for parts in zip(*cols)]


def encode_doubles(values: np.ndarray) -> list[bytes]:
    """ValueProto(double_val=x).SerializeToString() for each x; NaN -> an empty ValueProto (null)."""
    v = np.ascontiguousarray(values, dtype="<f8")
    raw = np.empty((len(v), 9), dtype=np.uint8)
    raw[:, 0] = _DOUBLE_TAG
    raw[:, 1:] = v.view(np.uint8).reshape(-1, 8)
    out = raw.view("S9").ravel().tolist()
    nan = np.isnan(v)
    if nan.any():
        out = [b"" if n else b for b, n in zip(out, nan)]
    # numpy's S dtype strips trailing NULs: restore full 9-byte payloads.
    return [b if len(b) == 9 or b == b"" else b.ljust(9, b"\x00") for b in out]


def decode_values(vals: list[bytes]) -> np.ndarray:
    """Float values of serialized ValueProtos: 9-byte doubles vectorised, nulls NaN, anything else via protobuf."""
    out = np.full(len(vals), np.nan)
    fast = np.array([len(v) == 9 and v[0] == _DOUBLE_TAG for v in vals], dtype=bool)
    if fast.any():
        buf = b"".join(v[1:] for v, f in zip(vals, fast) if f)
        out[fast] = np.frombuffer(buf, dtype="<f8")
    rest = np.flatnonzero(~fast)
    if len(rest):
        from feast.protos.feast.types.Value_pb2 import Value
        for i in rest:
            if vals[i]:
                pv = Value()
                pv.ParseFromString(vals[i])
                kind = pv.WhichOneof("val")
                out[i] = float(getattr(pv, kind)) if kind in ("double_val", "float_val", "int64_val",
                                                               "int32_val") else np.nan
    return out


def redis_field_key(view: str, feature: str) -> bytes:
    """Feast's Redis hash field of a feature; a private Feast helper, so its absence refuses the run up front."""
    try:
        from feast.infra.online_stores.helpers import _mmh3
    except ImportError as e:
        raise FeatureStoreError(f"this Feast has no feast.infra.online_stores.helpers._mmh3 ({e}), so the Redis "
                                f"field keys cannot be reproduced. {FIX}") from e
    return _mmh3(f"{view}:{feature}")


def check_encoders(redis: bool) -> None:
    """Compare the encoders with Feast's own serializers, so a Feast upgrade that moves a byte stops the bulk path."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    df = pd.DataFrame({"query_id": ["q_ab"], "product_id": ["B0é"]})
    pairs = []
    for keys in (["query_id", "product_id"], ["product_id"]):
        ek = EntityKey(join_keys=keys, entity_values=[Value(string_val=df.loc[0, k]) for k in keys])
        pairs.append((f"entity key {keys}", encode_entity_keys(df, keys)[0], serialize_entity_key(ek, 3)))
    for x in (0.0, 1.5, -2.25e-300, 256.0, 1.0):
        pairs.append((f"double {x}", encode_doubles(np.array([x]))[0], Value(double_val=x).SerializeToString()))
    if redis:
        redis_field_key("v", "f")  # Feast's own hash: only its presence needs checking, before any write
    bad = [name for name, ours, feast in pairs if ours != feast]
    if bad:
        raise FeatureStoreError(f"this Feast serializes {bad} differently from the bulk writer's encoders. {FIX}")


# --- what the writer honours --------------------------------------------------------------------------------
def sqlite_path(config: Any) -> Path:
    """The online SQLite file exactly as Feast resolves it (relative paths are under the repo path)."""
    path = Path(config.online_store.path)
    return path if path.is_absolute() or not config.repo_path else Path(config.repo_path) / path


def online_kind(config: Any) -> str:
    """'sqlite' or 'redis' from Feast's own config, so the writer never disagrees with Feast on where rows go."""
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    online = config.online_store
    if isinstance(online, SqliteOnlineStoreConfig):
        return "sqlite"
    if isinstance(online, RedisOnlineStoreConfig):
        return "redis"
    raise _refuse(f"online_store type {online.type!r}", "only the sqlite and redis layouts are reproduced")


def fast_read_supported(config: Any) -> bool:
    """Whether `SqliteReader` reads the tables Feast wrote: SQLite, and table names without a version suffix."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    return (isinstance(config.online_store, SqliteOnlineStoreConfig)
            and not config.registry.enable_online_feature_view_versioning)


def redis_connection_params(connection_string: str) -> dict[str, Any]:
    """host, port, db, password from Feast's connection string; other parameters (ssl, ...) are refused."""
    parts = connection_string.split(",")
    nodes = [p for p in parts if "=" not in p]
    params = dict(p.split("=", 1) for p in parts if "=" in p)
    unknown = sorted(set(params) - {"db", "password"})
    if len(nodes) != 1 or unknown:
        raise _refuse(f"online_store.connection_string parameters {unknown or nodes}",
                      "the writer opens one plain connection to one node with db and password only")
    host, _, port = nodes[0].partition(":")
    return {"host": host, "port": int(port or 6379), "db": int(params.get("db", 0)),
            "password": params.get("password")}


def check_store_settings(config: Any) -> str:
    """Refuse every Feast store setting that makes Feast write another layout; returns the online store kind."""
    if config.entity_key_serialization_version != 3:
        raise _refuse(f"entity_key_serialization_version={config.entity_key_serialization_version}",
                      "the encoders write version 3 keys")
    if config.registry.enable_online_feature_view_versioning:
        raise _refuse("registry.enable_online_feature_view_versioning=true",
                      "Feast then names tables and hash fields <view>_v<N>; the writer writes <view>")
    kind, online = online_kind(config), config.online_store
    if kind == "sqlite":
        if online.enable_openai_compatible_store:
            raise _refuse("online_store.enable_openai_compatible_store=true",
                          "Feast then also writes a value_num column")
        if online.vector_enabled:
            raise _refuse("online_store.vector_enabled=true", "Feast then also writes a vector_value column")
        return kind
    if online.key_ttl_seconds:
        raise _refuse(f"online_store.key_ttl_seconds={online.key_ttl_seconds}",
                      "Feast expires every entity key after it; the writer's keys never expire")
    if online.redis_type.value != "redis":
        raise _refuse(f"online_store.redis_type={online.redis_type.value}",
                      "the writer talks to one plain Redis node, not a cluster or a sentinel")
    redis_connection_params(online.connection_string)
    return kind


@dataclass(frozen=True)
class ViewPlan:
    """One view's bulk write, taken from the registry (what Feast's materialize would write), not from code."""

    name: str
    keys: list[str]
    features: list[str]
    timestamp_field: str
    path: Path

    @property
    def columns(self) -> list[str]:
        return [*self.keys, self.timestamp_field, *self.features]


def _registered_view(fs: Any, name: str) -> Any:
    from feast.errors import FeatureViewNotFoundException

    try:
        return fs.get_feature_view(name)
    except FeatureViewNotFoundException as e:
        raise FeatureStoreError(f"feature view {name!r} is not registered. Fix: call LtrStore.apply() first.") from e


def plan_view(fs: Any, name: str) -> ViewPlan:
    """Refuse a registered view whose definition or source the writer would not reproduce byte for byte."""
    from feast import FileSource
    from feast.types import Float64, String
    from feast.version_utils import normalize_version_string

    fv = _registered_view(fs, name)
    if not fv.online:
        raise _refuse(f"online=False on view {name!r}", "Feast keeps no online rows for it")
    if normalize_version_string(fv.version) != "latest":
        raise _refuse(f"version={fv.version!r} on view {name!r}",
                      "a pinned feature view version is a registry snapshot the writer does not resolve")
    odd = [f"{f.name}: {f.dtype}" for f in fv.entity_columns if f.dtype != String]
    odd += [f"{f.name}: {f.dtype}" for f in fv.features if f.dtype != Float64]
    if odd:
        raise _refuse(f"field types {odd} in view {name!r}", "the writer encodes String keys and Float64 values")
    src = fv.batch_source
    if not isinstance(src, FileSource):
        raise _refuse(f"a {type(src).__name__} source for view {name!r}", "the writer reads local parquet files")
    if src.field_mapping or src.created_timestamp_column:
        raise _refuse(f"field_mapping/created_timestamp_column on the source of view {name!r}",
                      "the writer reads columns by their view names and orders rows by event time only")
    path = Path(src.path)
    if not path.is_absolute() and fs.config.repo_path:
        path = Path(fs.config.repo_path) / path
    plan = ViewPlan(name, list(fv.join_keys), [f.name for f in fv.features], src.timestamp_field, path)
    _check_source_columns(plan)
    return plan


def _check_source_columns(plan: ViewPlan) -> None:
    """The source must hold exactly the view's columns: an extra one means the data and definitions disagree."""
    if not plan.path.is_file():
        raise FeatureStoreError(f"source {plan.path} of view {plan.name!r} does not exist. Fix: run "
                                "features.build.build_features into that directory first.")
    have = pq.read_schema(plan.path).names
    extra = [c for c in have if c not in plan.columns]
    missing = [c for c in plan.columns if c not in have]
    if extra or missing:
        raise FeatureStoreError(
            f"source {plan.path} of view {plan.name!r} has undeclared column(s) {extra} and lacks {missing}: the "
            "parquet file and the registered view disagree (e.g. built with other windows_days). Fix: rebuild the "
            "features with this store's config, or use LtrStore.materialize (Feast's own writer), which reads "
            "only the declared columns.")


# --- the writer ------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    keys: list[bytes]  # serialized entity keys, ascending
    ts: pd.Series  # event timestamps, UTC
    values: np.ndarray  # rows x features (the plan's order), float64, NaN = null


def latest_rows(plan: ViewPlan, memory_limit: str | None = None) -> pd.DataFrame:
    """The latest row per entity key of a view's parquet source, which is what an online store keeps.

    Picked by DuckDB while it scans the file, so a source with many rows per entity (the engagement views
    hold one per change day) is never loaded whole: memory grows with the entities, not the rows. A tie on
    the event time goes to the row written last, as a stable sort by time then keep-last would."""
    import tempfile

    from .duckdb_io import DEFAULT_MEMORY, arrow_table, connect, parquet_source

    cols = ", ".join(f'"{c}"' for c in plan.columns)
    keys = ", ".join(f'"{k}"' for k in plan.keys)
    src = parquet_source(plan.path)
    # the row number of each entity's latest row (a hash aggregate), then those rows: a fifth of the CPU of a
    # window (`QUALIFY row_number() OVER ...`) that sorts every entity's rows (16x world: 1.1 s vs 6 s)
    ts = f'"{plan.timestamp_field}"'
    pick = f"SELECT max(struct_pack(t := {ts}, r := file_row_number)).r AS r FROM {src} GROUP BY {keys}"
    sql = f"SELECT {cols} FROM {src} WHERE file_row_number IN ({pick})"
    with tempfile.TemporaryDirectory(prefix="ltr-duckdb-") as tmp:
        con = connect(memory_limit or DEFAULT_MEMORY, temp_dir=tmp)
        try:
            return arrow_table(con.sql(sql)).to_pandas()
        finally:
            con.close()


class OnlineWriter:
    """Writes the latest row per entity of registered views into the online store in Feast's layout, in bulk."""

    def __init__(self, fs: Any, batch_rows: int):
        self.fs, self.batch_rows = fs, batch_rows

    def plan(self, views: list[str]) -> list[ViewPlan]:
        """Every check, for every view, before the first write: a refusal leaves the store as it was."""
        kind = check_store_settings(self.fs.config)
        check_encoders(redis=kind == "redis")
        plans = [plan_view(self.fs, v) for v in views]
        if kind == "sqlite":
            _SqliteTarget(self.fs.config).check_tables(plans)
        return plans

    def write(self, views: list[str], progress: bool = True) -> dict[str, int]:
        """Rows written per view; the same online contents as Feast's materialize over all time."""
        plans = self.plan(views)
        target = (_SqliteTarget if online_kind(self.fs.config) == "sqlite" else _RedisTarget)(self.fs.config)
        done: dict[str, int] = {}
        for p in plans:
            df = latest_rows(p)
            ek = encode_entity_keys(df, p.keys)
            order = sorted(range(len(df)), key=ek.__getitem__)  # key order: each batch appends to the B-tree
            df, ek = df.iloc[order], [ek[i] for i in order]
            ts = pd.to_datetime(df[p.timestamp_field], utc=True)
            values = df[p.features].to_numpy(dtype=np.float64)
            bar = tqdm(total=len(df), desc=f"bulk {p.name}", disable=not progress, leave=False)
            for s in range(0, len(df), self.batch_rows):
                e = s + self.batch_rows
                target.write(p, _Batch(ek[s:e], ts.iloc[s:e], values[s:e]))
                bar.update(min(e, len(df)) - s)
            bar.close()
            done[p.name] = len(df)
        return done


class _SqliteTarget:
    """Feast's SQLite layout: table <project>_<view>, one row per (entity key, feature)."""

    def __init__(self, config: Any):
        self.db, self.project = sqlite_path(config), config.project

    def check_tables(self, plans: list[ViewPlan]) -> None:
        """Refuse before writing when apply() has not created a view's table (a mid-run failure would not)."""
        have: set[str] = set()
        if self.db.exists():
            con = sqlite3.connect(self.db)
            try:
                have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        missing = [f"{self.project}_{p.name}" for p in plans if f"{self.project}_{p.name}" not in have]
        if missing:
            raise FeatureStoreError(f"online tables {missing} do not exist in {self.db}. Fix: call LtrStore.apply() "
                                    "first.")

    @staticmethod
    def _stage_rows(batch: _Batch, order: list[int]) -> list[tuple]:
        """One row per entity: key, all values as one blob of 9-byte ValueProtos, event second, value texts."""
        # Feast's sqlite adapter stores int(naive_utc_datetime.timestamp()); do exactly the same per unique ts.
        codes, uniq = pd.factorize(batch.ts.dt.tz_localize(None))
        ts_s = np.array([int(u.to_pydatetime().timestamp()) for u in uniq], dtype=np.int64)[codes].tolist()
        mat = batch.values[:, order]
        n, nf = mat.shape
        raw = np.empty((n, nf, 9), dtype=np.uint8)
        raw[:, :, 0] = _DOUBLE_TAG  # what encode_doubles writes
        raw[:, :, 1:] = np.ascontiguousarray(mat, dtype="<f8").view(np.uint8).reshape(n, nf, 8)
        buf, w = raw.tobytes(), 9 * nf
        texts = [[None if x != x else str(x) for x in r] for r in mat.tolist()]  # Feast: str(value); NaN: NULL
        return [(batch.keys[i], buf[i * w:(i + 1) * w], ts_s[i], *texts[i]) for i in range(n)]

    def write(self, plan: ViewPlan, batch: _Batch) -> None:
        """One staged INSERT ... SELECT per batch (rows arrive sorted by entity key).

        Python binds one staging row per entity into a TEMP table; SQLite itself expands it into Feast's one
        row per (entity, feature), in primary-key order so the B-trees only append. About a fifteenth of the
        parameter binding of a row-per-feature executemany; one transaction per batch, so a crash leaves
        whole batches or nothing.
        """
        names = sorted(plan.features)  # primary-key order within an entity
        stage = self._stage_rows(batch, [plan.features.index(f) for f in names])
        nf = len(names)
        now = int(datetime.now(UTC).replace(tzinfo=None).timestamp())
        pick = "CASE f.j " + " ".join(f"WHEN {j} THEN s.t{j}" for j in range(nf)) + " END"
        con = sqlite3.connect(self.db, timeout=60)
        try:
            con.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache for this connection only
            con.execute("DROP TABLE IF EXISTS temp._ltr_stage")
            con.execute("DROP TABLE IF EXISTS temp._ltr_feat")
            con.execute(f"CREATE TEMP TABLE _ltr_stage (ek BLOB, vals BLOB, ts INTEGER, "
                        f"{', '.join(f't{j} TEXT' for j in range(nf))})")
            con.execute("CREATE TEMP TABLE _ltr_feat (j INTEGER PRIMARY KEY, name TEXT)")
            con.executemany("INSERT INTO temp._ltr_feat VALUES (?, ?)", list(enumerate(names)))
            con.executemany(f"INSERT INTO temp._ltr_stage VALUES ({', '.join('?' * (nf + 3))})", stage)
            with con:  # CROSS JOIN keeps the stage (key order) outer and features (name order) inner
                con.execute(
                    f'INSERT OR REPLACE INTO "{self.project}_{plan.name}" (entity_key, feature_name, value, '
                    f"value_text, event_ts, created_ts) SELECT s.ek, f.name, CASE WHEN {pick} IS NULL THEN x'' "
                    f"ELSE substr(s.vals, 9 * f.j + 1, 9) END, {pick}, s.ts, ? "
                    "FROM temp._ltr_stage AS s CROSS JOIN temp._ltr_feat AS f", (now,))
        finally:
            con.close()


class _RedisTarget:
    """Feast's Redis layout: one hash per entity (key + project), mmh3(view:feature) -> ValueProto,
    `_ts:view` -> Timestamp proto."""

    def __init__(self, config: Any):
        self.params = redis_connection_params(config.online_store.connection_string)
        self.project = config.project.encode("utf-8")

    def _send(self, commands: list[tuple[bytes, ...]]) -> list[Any]:
        """Send many commands in one write and read the replies: packed by hiredis in C, no per-command
        pipeline bookkeeping (what `redis-cli --pipe` does for mass insertion). Error replies raise."""
        import hiredis
        import redis

        conn = redis.Connection(**self.params)
        try:
            conn.connect()
            conn.send_packed_command([b"".join(hiredis.pack_command(c) for c in commands)], check_health=False)
            return [conn.read_response() for _ in commands]
        finally:
            conn.disconnect()

    def write(self, plan: ViewPlan, batch: _Batch) -> None:
        """One batched read of the stored timestamps, then one batched write of the rows that are not older."""
        from google.protobuf.timestamp_pb2 import Timestamp

        rkeys = [k + self.project for k in batch.keys]
        ts_key = f"_ts:{plan.name}".encode()
        ts_ns = batch.ts.astype("datetime64[ns, UTC]").astype("int64").to_numpy()
        protos = {int(t): Timestamp(seconds=int(t // 10**9), nanos=int(t % 10**9)).SerializeToString()
                  for t in np.unique(ts_ns)}
        fkeys = [redis_field_key(plan.name, f) for f in plan.features]
        cols = [encode_doubles(batch.values[:, j]) for j in range(len(plan.features))]
        # Never overwrite a newer row (what Feast's writer guarantees too): read the stored timestamps first.
        prev = self._send([(b"HGET", k, ts_key) for k in rkeys])
        writes = []
        for i, (k, old) in enumerate(zip(rkeys, prev)):
            t = int(ts_ns[i])
            if old is not None:
                o = Timestamp()
                o.ParseFromString(old)
                if o.seconds * 10**9 + o.nanos > t:
                    continue
            args = [b"HSET", k, ts_key, protos[t]]
            for fk, c in zip(fkeys, cols):
                args += (fk, c[i])
            writes.append(tuple(args))
        if writes:
            self._send(writes)
