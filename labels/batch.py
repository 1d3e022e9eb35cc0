"""Grading through the OpenAI Batch API: the same requests as live grading, at half the price, within 24 h.

    grade_in_batches(backend, pairs, cache, BatchSettings(...)) -> report dict

The pairs not yet in the cache become a JSONL file of chat-completions requests (custom_id = the pair's
cache key), uploaded and run as a batch; the output and error files are read back line by line into the
cache, priced at batch rates. Each step is written to the cache file (tables `batches` and
`batch_requests`) before the next is taken, so a run killed at any point resumes rather than paying
twice: a re-run polls the batch it finds there; a pair inside a running batch is never submitted again;
an input file recorded without a batch id (a kill between creating the batch and recording it) is
matched against the server's batch list before anything new is created. Failed lines are graded again
live where a retry can help (429, 5xx, expired, cancelled, missing), or reported pair by pair.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .backends.base import LabelerError, Pair
from .backends.openai import OpenAIBackend, run_sync
from .cache import LabelCache
from .config import BatchSettings

FINAL = ("completed", "failed", "expired", "cancelled")
_LEDGER = """
CREATE TABLE IF NOT EXISTS batches (
    input_file_id TEXT PRIMARY KEY, namespace TEXT NOT NULL, batch_id TEXT, status TEXT NOT NULL,
    n_requests INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batch_requests (
    input_file_id TEXT NOT NULL, custom_id TEXT NOT NULL, query TEXT NOT NULL, text_hash TEXT NOT NULL,
    query_id TEXT NOT NULL, product_id TEXT NOT NULL, prompt_text TEXT NOT NULL,
    PRIMARY KEY (input_file_id, custom_id));
"""


class Ledger:
    """The batches of a cache file and the pairs each one carries (its own connection to the same file)."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_LEDGER)
        self.db.commit()

    def open_batches(self, namespace: str) -> list[dict[str, Any]]:
        """Batches of this namespace whose results are not yet in the cache, oldest first."""
        cur = self.db.execute("SELECT input_file_id, batch_id, status, n_requests FROM batches WHERE namespace=? "
                              "AND status NOT IN ('ingested', 'failed') ORDER BY created_at", (namespace,))
        return [dict(zip(("input_file_id", "batch_id", "status", "n_requests"), r)) for r in cur]

    def record_upload(self, file_id: str, namespace: str, rows: list[tuple]) -> None:
        now = time.time()
        with self.db:
            self.db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?)",
                            (file_id, namespace, None, "uploaded", len(rows), now, now))
            self.db.executemany("INSERT OR IGNORE INTO batch_requests VALUES (?,?,?,?,?,?,?)",
                                [(file_id, *r) for r in rows])

    def update(self, file_id: str, status: str, batch_id: str | None = None) -> None:
        with self.db:
            self.db.execute("UPDATE batches SET status=?, batch_id=COALESCE(?, batch_id), updated_at=? "
                            "WHERE input_file_id=?", (status, batch_id, time.time(), file_id))

    def requests(self, file_id: str) -> dict[str, tuple]:
        """custom_id -> (query, text_hash, query_id, product_id, prompt_text)."""
        cur = self.db.execute("SELECT custom_id, query, text_hash, query_id, product_id, prompt_text FROM "
                              "batch_requests WHERE input_file_id=?", (file_id,))
        return {r[0]: r[1:] for r in cur}

    def close(self) -> None:
        self.db.close()


def _line_outcome(line: dict[str, Any]) -> tuple[dict | None, str | None, bool]:
    """(response body, failure, retryable) of one output or error file line."""
    resp, err = line.get("response"), line.get("error")
    resp = resp if isinstance(resp, dict) else {}
    err = err if isinstance(err, dict) else ({"message": str(err)} if err else None)
    code = int(resp.get("status_code") or 0)
    if code == 200 and isinstance(resp.get("body"), dict):
        return resp["body"], None, False
    if err:
        c = str(err.get("code") or "")
        return None, f"{c}: {err.get('message', '')}".strip(": "), c in ("batch_expired", "batch_cancelled")
    msg = ((resp.get("body") or {}).get("error") or {}).get("message", "") if isinstance(resp.get("body"), dict) \
        else ""
    return None, f"HTTP {code}: {msg}".strip(": "), code in (408, 429) or code >= 500


class BatchRun:
    """One `grade_in_batches` call: resume what the ledger holds, submit the rest, poll, read back."""

    def __init__(self, backend: OpenAIBackend, cache: LabelCache, settings: BatchSettings,
                 progress: Callable[[int], None] | None = None):
        self.be, self.cache, self.s, self.progress = backend, cache, settings, progress
        self.ledger = Ledger(cache.path)
        self.namespace = "\x1f".join((backend.name, backend.model, backend.prompt_version))
        self.azure = bool(backend.s.azure_endpoint or backend.s.api_version)
        self.report: dict[str, Any] = {"batches": [], "submitted": 0, "from_batch": 0, "failed": [],
                                       "retry": [], "pending": [], "stopped_reason": None}
        self.client: Any = None
        self.t0 = time.monotonic()
        self.reserved = 0.0  # the budget held for submitted requests until their results are in

    def _jsonl(self, todo: Sequence[tuple[str, Pair]]) -> bytes:
        url = "/chat/completions" if self.azure else "/v1/chat/completions"
        return "".join(json.dumps({"custom_id": k, "method": "POST", "url": url, "body": self.be.request_body(p)},
                                  separators=(",", ":")) + "\n" for k, p in todo).encode()

    async def _submit(self, todo: Sequence[tuple[str, Pair]]) -> dict[str, Any]:
        """Upload the requests, record them, then create the batch (recorded too)."""
        data = self._jsonl(todo)
        f = await self.be.call("uploading the batch input file", lambda: self.client.files.create(
            file=("ltr-label-batch.jsonl", data, "application/jsonl"), purpose="batch"))
        rows = [(k, p.query, p.text_hash, p.query_id, p.product_id, json.dumps(self.be.messages(p)))
                for k, p in todo]
        self.ledger.record_upload(f.id, self.namespace, rows)
        self.report["submitted"] += len(todo)
        row = {"input_file_id": f.id, "batch_id": None, "status": "uploaded", "n_requests": len(todo)}
        await self._ensure_created(row)
        return row

    async def _find_created(self, file_id: str) -> str | None:
        """The id of a batch already created for this input file (a kill came before it was recorded)."""
        seen = 0
        async for b in self.client.batches.list(limit=100):
            if b.input_file_id == file_id:
                return b.id
            seen += 1
            if seen >= 1000:
                break
        return None

    async def _ensure_created(self, row: dict[str, Any]) -> None:
        """Create the batch of a recorded input file, unless one exists: every attempt looks first, so
        neither a kill nor a timed-out create that did land on the server makes a second, paid batch."""
        if row["batch_id"]:
            return
        fid = row["input_file_id"]

        async def find_or_create() -> str:
            found = await self._find_created(fid)
            if found is not None:
                return found
            b = await self.client.batches.create(
                input_file_id=fid, endpoint="/chat/completions" if self.azure else "/v1/chat/completions",
                completion_window=self.s.completion_window, metadata={"source": "ltr label --batch"})
            return b.id

        bid = await self.be.call(f"creating the batch for input file {fid}", find_or_create)
        self.ledger.update(fid, "submitted", bid)
        row.update(batch_id=bid, status="submitted")

    async def _wait(self, row: dict[str, Any]) -> Any | None:
        """Poll until the batch ends (its final object) or max_wait_s passes (None: still running)."""
        bid = row["batch_id"]
        while True:
            b = await self.be.call(f"polling batch {bid}", lambda: self.client.batches.retrieve(bid))
            self.ledger.update(row["input_file_id"], b.status)
            if b.status in FINAL:
                return b
            if self.s.max_wait_s is not None and time.monotonic() - self.t0 >= self.s.max_wait_s:
                return None
            await asyncio.sleep(self.s.poll_s)

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of a result file; a line that does not parse is skipped (its pair then has no
        result line and is retried or reported like any other)."""
        if not file_id:
            return []
        content = await self.be.call(f"downloading batch file {file_id}", lambda: self.client.files.content(file_id))
        out = []
        for x in content.text.splitlines():
            try:
                line = json.loads(x) if x.strip() else None
            except ValueError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out

    async def _ingest(self, row: dict[str, Any], batch: Any) -> None:
        """Every line of the output and error files: a grade into the cache, or a failure for the report."""
        reqs = self.ledger.requests(row["input_file_id"])
        seen: set[str] = set()
        for line in [*await self._lines(batch.output_file_id), *await self._lines(batch.error_file_id)]:
            cid = str(line.get("custom_id"))
            if cid not in reqs or cid in seen:
                continue
            seen.add(cid)
            body, failure, retryable = _line_outcome(line)
            if body is not None:
                failure, retryable = self._store(reqs[cid], body)
            if failure is not None:
                self._fail(reqs[cid], failure, retryable)
        for cid in reqs.keys() - seen:  # a batch that failed or was cancelled before reaching these lines
            self._fail(reqs[cid], f"no result line (batch {batch.status})", True)
        self.ledger.update(row["input_file_id"], "ingested")

    def _store(self, req: tuple, body: dict[str, Any]) -> tuple[str | None, bool]:
        query, text_hash, qid, pid, prompt_text = req
        try:
            r = self.be.result_from_body(qid, pid, body, prompt_text, batch=True)
        except Exception as e:  # noqa: BLE001 - a reply without a grade: reported for this pair, not fatal
            return f"unusable answer ({e})", False
        self.cache.put_fields(query, text_hash, qid, pid, r)
        self.be.meter.settle(0.0, r.cost, r.tokens_in, r.tokens_out)
        self.report["from_batch"] += 1
        if self.progress:
            self.progress(1)
        return None, False

    def _fail(self, req: tuple, why: str, retryable: bool) -> None:
        entry = {"query_id": req[2], "product_id": req[3], "error": why, "retryable": retryable}
        self.report["retry" if retryable else "failed"].append(entry)

    async def _finish(self, row: dict[str, Any]) -> None:
        await self._ensure_created(row)
        self.report["batches"].append(row["batch_id"])
        b = await self._wait(row)
        if b is None:
            self.report["pending"].append(row["batch_id"])
            return
        if b.status == "failed" and not (b.output_file_id or b.error_file_id):
            self.ledger.update(row["input_file_id"], "failed")
            errs = [e.message for e in ((b.errors.data if b.errors else None) or [])][:3]
            raise LabelerError(f"batch {b.id} failed before grading any line: {errs or 'no reason given'}. Fix: "
                               "check the model name and the request fields; a re-run submits a new batch.")
        await self._ingest(row, b)

    async def run(self, todo: dict[str, Pair]) -> dict[str, Any]:
        async with self.be.make_client() as self.client:
            for row in self.ledger.open_batches(self.namespace):  # resume first: those lines are paid for
                for cid in self.ledger.requests(row["input_file_id"]):
                    todo.pop(cid, None)
                await self._finish(row)
            items = list(todo.items())
            for i in range(0, len(items), self.s.max_requests):
                chunk, held = self._within_budget(items[i:i + self.s.max_requests])
                if chunk:
                    row = await self._submit(chunk)
                    await self._finish(row)
                    if row["batch_id"] not in self.report["pending"]:  # its real cost is in: free the hold
                        self.be.meter.release(held)
                        self.reserved -= held
                if self.report["stopped_reason"] == "budget":
                    break
        return self.report

    def _within_budget(self, items: list[tuple[str, Pair]]) -> tuple[list[tuple[str, Pair]], float]:
        """(the pairs whose worst-case batch cost fits the budget, the dollars held for them until their
        results are in)."""
        est = [self.be.estimate_dollars(p, batch=True) for _, p in items]
        n = 0
        while n < len(items) and self.be.meter.reserve(est[n]):
            n += 1
        if n < len(items):
            self.report["stopped_reason"] = "budget"
        self.reserved += sum(est[:n])
        return items[:n], sum(est[:n])


def grade_in_batches(backend: OpenAIBackend, pairs: Sequence[Pair], cache: LabelCache, settings: BatchSettings,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Grade the pairs of `pairs` not yet cached through the Batch API; returns the report (batch ids,
    submitted, from_batch, retried_live, failed pair by pair, pending batch ids, stopped_reason)."""
    hit = cache.get_many(backend.name, backend.model, backend.prompt_version, pairs)
    todo: dict[str, Pair] = {}
    for p in pairs:
        k = cache.key(backend.name, backend.model, backend.prompt_version, p)
        if k not in hit:
            todo.setdefault(k, p)
    run = BatchRun(backend, cache, settings, progress)
    try:
        report = run_sync(lambda: run.run(todo))
    finally:
        backend.meter.release(run.reserved)
        run.ledger.close()
    _retry_live(backend, cache, pairs, report, settings)
    return report


def _retry_live(backend: OpenAIBackend, cache: LabelCache, pairs: Sequence[Pair], report: dict[str, Any],
                settings: BatchSettings) -> None:
    """Failed lines a retry can help: graded live one by one (each failure reported, none fatal)."""
    retry, report["retried_live"] = report.pop("retry"), 0
    if settings.retry_failed == "report":
        report["failed"].extend(retry)
        return
    by_id = {(p.query_id, p.product_id): p for p in pairs}
    for entry in retry:
        pair = by_id.get((entry["query_id"], entry["product_id"]))
        if pair is None:  # no longer a candidate of this dataset: a re-run of that dataset retries it
            report["failed"].append(entry)
            continue
        try:
            graded = backend.grade([pair], on_result=cache.put)
        except LabelerError as e:
            report["failed"].append({**entry, "error": f"{entry['error']}; live retry: {e}"})
            continue
        if graded:
            report["retried_live"] += 1
        else:  # the budget stopped it
            report["failed"].append({**entry, "error": f"{entry['error']}; live retry: over the budget"})
            report["stopped_reason"] = "budget"
