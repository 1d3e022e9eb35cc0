"""The served-feature log: what the model saw for every served candidate, written off the request path.

A request only puts one record on a bounded queue (microseconds; when the queue is full the record is
dropped and counted, the request never waits). One background thread turns records into rows in the
training frame's shape, one row per (request, candidate): `request_id, event_timestamp, query_id, query,
product_id, position, score, phase, model_version, store, cold_route` (the cold scorer that ranked the
request, null when the trees did), `arm` (interleaved requests: champion or challenger, the model that placed
the candidate; the features and score are the champion's) and then the model's features as float columns,
and writes them as parquet parts, each closed after `part_records` requests or `part_seconds`, whichever
comes first (written to a temporary name and renamed: a crash never leaves half a file). A part holds one
model version's feature list; a reload to a model with other features starts a new part.

Joining with engagement: `request_id` is the id the response returned; a shop's UBI events carry it as
their `query_id` (ltr.data.ubi), so `read_served_log(dir).merge(events, on="request_id")` gives training rows
with the exact feature values served.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ServedLogConfig

log = logging.getLogger(__name__)


class ServedLog:
    """Bounded queue in front of a parquet writer thread; `put` never blocks."""

    def __init__(self, log_dir: str | Path, cfg: ServedLogConfig | None = None) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg or ServedLogConfig()
        self._q: queue.Queue = queue.Queue(maxsize=self.cfg.queue_records)
        self.dropped = self.written_records = self.parts = self.errors = 0
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> bool:
        """Queue one request's record; False (and counted) when the writer cannot keep up."""
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    # -- the writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        buf: list[dict[str, Any]] = []
        opened = time.monotonic()
        while not (self._stop.is_set() and self._q.empty()):
            try:
                rec = self._q.get(timeout=0.2)
            except queue.Empty:
                rec = None
            if rec is not None and buf and rec["features"] != buf[0]["features"]:
                self._flush(buf)  # another model's feature list: another part
                buf, opened = [], time.monotonic()
            if rec is not None:
                buf.append(rec)
            if buf and (len(buf) >= self.cfg.part_records or time.monotonic() - opened >= self.cfg.part_seconds):
                self._flush(buf)
                buf, opened = [], time.monotonic()
        if buf:
            self._flush(buf)

    def _flush(self, records: list[dict[str, Any]]) -> None:
        try:
            table = records_table(records)
            now = datetime.now(UTC)
            day = self.dir / f"date={now:%Y-%m-%d}"
            day.mkdir(exist_ok=True)
            self._seq += 1
            path = day / f"served-{now:%Y%m%dT%H%M%S}-{self._seq:06d}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            # dictionary pages for the text columns only: tried on float features (the default) it cost ~1 s a
            # part of random-looking values that then fell back to plain pages anyway
            text = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
            pq.write_table(table, tmp, use_dictionary=text)
            tmp.replace(path)
            self.parts += 1
            self.written_records += len(records)
        except Exception:  # noqa: BLE001 - a full disk loses log records, never the service
            self.errors += 1
            self.dropped += len(records)
            log.exception("served-feature log part could not be written")


def records_table(records: list[dict[str, Any]]) -> pa.Table:
    """One row per (request, candidate) in the training frame's shape; all records share one feature list.

    Built with pyarrow, not pandas: the per-request columns are dictionary-encoded (one value per request,
    an index per row) and the features go in as float columns of one matrix, so no Python object is made
    per row. The pandas frame of 2,000 requests x 100 candidates cost ~3 s of the writer thread's CPU (1 s
    to build, 2 s to write), which the service's requests then queued behind. Features are float32: the
    values the trees compared (`predict_matrix` casts), at half the bytes of float64."""
    feats = list(records[0]["features"])
    which = np.repeat(np.arange(len(records)), [len(r["product_ids"]) for r in records])

    def per_request(key: str) -> pa.DictionaryArray:
        vals = [r.get(key) for r in records]
        uniq = list(dict.fromkeys(v for v in vals if v is not None))
        at = {v: i for i, v in enumerate(uniq)}
        codes = np.array([at.get(v, -1) for v in vals], dtype=np.int32)[which]
        return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(uniq, type=pa.string()))

    ts = pa.array([r["ts"] for r in records], type=pa.timestamp("us", tz="UTC"))
    cols = {"request_id": per_request("request_id"),
            "event_timestamp": ts.take(pa.array(which)),
            "query_id": per_request("query_id"), "query": per_request("query"),
            "product_id": pa.array([p for r in records for p in r["product_ids"]], type=pa.string()),
            "position": pa.array(np.concatenate([r["position"] for r in records]).astype(np.int32)),
            "score": pa.array(np.concatenate([r["scores"] for r in records]).astype(np.float64)),
            "phase": pa.array(np.concatenate([r["phase"] for r in records]).astype(np.int8)),
            "model_version": per_request("model_version"), "store": per_request("store"),
            "cold_route": per_request("cold_route"), "arm": _arms(records)}
    # one contiguous row per feature, each request's block transposed as it is copied in: a transpose of the
    # whole (rows, features) matrix afterwards took 60-220 ms of the writer thread a part, against ~40 ms
    Xt = np.empty((len(feats), len(which)), np.float32)
    np.concatenate([r["X"].T for r in records], axis=1, out=Xt, casting="same_kind")
    cols.update({f: pa.array(Xt[j]) for j, f in enumerate(feats)})
    return pa.table(cols)


def _arms(records: list[dict[str, Any]]) -> pa.DictionaryArray:
    """Per row, the interleaving arm that placed the candidate (null for a request that was not interleaved)."""
    codes = np.concatenate([np.full(len(r["product_ids"]), -1, np.int32) if r.get("arm") is None
                            else (np.asarray(r["arm"]) == "challenger").astype(np.int32) for r in records])
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(["champion", "challenger"]))


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Dictionary-encoded columns back to plain strings (None where missing), as a training frame has them."""
    for c, t in frame.dtypes.items():
        if isinstance(t, pd.CategoricalDtype):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame


def read_served_log(log_dir: str | Path) -> pd.DataFrame:
    """Every part under `log_dir` as one frame (parts with other feature lists align by name, NaN elsewhere)."""
    parts = sorted(Path(log_dir).rglob("served-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=["request_id", "event_timestamp", "query_id", "query", "product_id",
                                     "position", "score", "phase", "model_version", "store", "cold_route", "arm"])
    return pd.concat([_plain(pd.read_parquet(p)) for p in parts], ignore_index=True)


__all__ = ["ServedLog", "read_served_log", "records_table"]
