"""A real local HTTP server speaking the OpenAI wire protocol: chat completions, files and batches.

A test double for a paid LLM API only: real sockets, real HTTP/1.1 (keep-alive), real JSON and multipart.
It answers a deterministic grade per (query, product) prompt, and behaves as OpenAI does where the
labeler must adapt:
- chat models (any name) return top logprobs; reasoning models (gpt-5*, o1/o3/o4*, or `reasoning=True`)
  answer HTTP 400 to `max_tokens`, to a temperature other than 1 and to `logprobs`, take
  `max_completion_tokens`, spend `reasoning_tokens` of it before answering (an empty reply with
  finish_reason "length" when it runs out), and sample their answer (temperature 1) per choice;
- structured output: `response_format` json_schema, vLLM's `guided_json` or llama.cpp's `json_schema`
  give a JSON answer {intent, match, grade} (with token logprobs for a chat model);
- `n` choices; Azure deployment paths (/openai/deployments/<name>/chat/completions?api-version=...);
- injected failures: 429 (Retry-After: 0, as an HTTP-date, as retry-after-ms, or an hour), 500, timeouts
  (answers after the client gave up), malformed JSON, a grade outside 0-3, missing logprobs, and a batch
  create answered only after `batch_create_sleep` (created already when the client gives up);
- /v1/files (multipart upload, content download) and /v1/batches (create, retrieve, list, cancel); every
  batch, polled or abandoned, moves validating -> in_progress -> finalizing -> completed a step per poll
  of any batch, and its lines are graded (and billed: `batch_per_prompt`) when it completes, so a
  batch created twice is billed twice; chosen lines can fail
  (`batch_line_errors`: line index -> HTTP status) or be cut off by expiry (`batch_expire_after`).
It counts every request, every completed chat response and the completed responses per prompt, and
requests whose client disconnected before the answer (aborted).

In a test:   with OpenAIServer(latency=0.05) as srv: ... srv.base_url ... srv.completed
As a process: python tests/openai_server.py --port 0 --latency 0.05   (prints "PORT <n>" then serves)
"""
from __future__ import annotations

import argparse
import email.parser
import email.policy
import email.utils
import hashlib
import json
import math
import re
import select
import socket
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

MODES = ("ok", "429", "429_date", "429_ms", "429_long", "500", "timeout", "malformed", "bad_grade", "no_logprobs",
         "no_logprobs_text")
REASONING_PREFIXES = ("gpt-5", "o1", "o3", "o4")
BATCH_STEPS = ("validating", "in_progress", "finalizing", "completed")
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]+")


def grade_for(text: str) -> int:
    """The server's deterministic 'opinion' of a prompt: same prompt, same grade, every run."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 4


def distribution_for(text: str) -> list[float]:
    g = grade_for(text)
    p = [0.1, 0.1, 0.1, 0.1]
    p[g] = 0.7
    return p


def sampled_grade(text: str, index: int) -> int:
    """Choice `index` of a temperature-1 answer: a deterministic draw from distribution_for(text)."""
    u = int(hashlib.sha1(f"{index}\x1f{text}".encode()).hexdigest(), 16) % 10_000 / 10_000
    acc = 0.0
    for g, p in enumerate(distribution_for(text)):
        acc += p
        if u < acc:
            return g
    return 3


def prompt_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _error(code: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           err_code: str | None = None) -> tuple[int, dict, dict]:
    return code, {"error": {"message": message, "type": kind, "param": param, "code": err_code}}, {}


def _top(probs: list[float]) -> list[dict]:
    tops = sorted(([str(k), math.log(v)] for k, v in enumerate(probs)), key=lambda t: -t[1])
    out = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops]
    out.append({"token": " the", "logprob": math.log(1e-4), "bytes": list(b" the")})
    return out


def _logprob_tokens(content: str, probs: list[float], structured: bool) -> list[dict]:
    """Token logprobs of a reply: the grade digit with the grade distribution as its top logprobs; in a
    JSON reply every other token too (digits inside intent/match included), each nearly certain."""
    def entry(tok: str, tops: list[dict]) -> dict:
        return {"token": tok, "logprob": tops[0]["logprob"], "bytes": list(tok.encode()), "top_logprobs": tops}

    if not structured:
        return [entry(content, _top(probs))]
    out, text = [], ""
    for tok in _TOKEN.findall(content):
        if tok.isdigit() and re.search(r'"grade"\s*:\s*$', text):
            out.append(entry(tok, _top(probs)))
        else:
            out.append(entry(tok, [{"token": tok, "logprob": math.log(0.99), "bytes": list(tok.encode())}]))
        text += tok
    return out


class Grader:
    """The chat-completions semantics, shared by the live endpoint and the batch runner."""

    def __init__(self, owner: "OpenAIServer"):
        self.o = owner

    def is_reasoning(self, model: str) -> bool:
        if self.o.reasoning is not None:
            return self.o.reasoning
        return model.split("/")[-1].lower().startswith(REASONING_PREFIXES)

    def reject(self, req: dict) -> tuple[int, dict, dict] | None:
        """OpenAI's HTTP 400s for a request a reasoning model does not take."""
        if not self.is_reasoning(str(req.get("model", ""))):
            return None
        if "max_tokens" in req:
            return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                               "'max_completion_tokens' instead.", "max_tokens", err_code="unsupported_parameter")
        if "temperature" in req and req["temperature"] != 1:
            return _error(400, f"Unsupported value: 'temperature' does not support {req['temperature']} with this "
                               "model. Only the default (1) value is supported.", "temperature",
                          err_code="unsupported_value")
        if req.get("logprobs"):
            return _error(400, "Unsupported parameter: 'logprobs' is not supported with this model.", "logprobs",
                          err_code="unsupported_parameter")
        return None

    @staticmethod
    def structured(req: dict) -> bool:
        rf = req.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return "grade" in (((rf.get("json_schema") or {}).get("schema") or {}).get("properties") or {})
        if rf.get("type") == "json_object":  # llama-cpp-python's server: the schema rides in response_format
            return "grade" in ((rf.get("schema") or {}).get("properties") or {})
        return isinstance(req.get("guided_json"), dict) or isinstance(req.get("json_schema"), dict)

    def choice(self, req: dict, prompt: str, index: int, mode: str) -> tuple[dict, int]:
        """(one choice, its completion tokens)."""
        reasoning, structured = self.is_reasoning(str(req.get("model", ""))), self.structured(req)
        sampled = reasoning or float(req.get("temperature") or 0) > 0
        g = sampled_grade(prompt, index) if sampled and int(req.get("n") or 1) > 1 else grade_for(prompt)
        tok = str(g) if mode != "bad_grade" else "7"
        if reasoning and int(req.get("max_completion_tokens") or 10**6) <= self.o.reasoning_tokens:
            return {"index": index, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": "length"}, int(req["max_completion_tokens"])
        if structured:
            query = re.search(r"Search query: (.*)", prompt)
            content = json.dumps({"intent": f"the shopper wants {query.group(1) if query else prompt[:40]}",
                                  "match": "attribute 2 of 3 matches", "grade": int(tok)})
        else:
            content = tok if mode != "no_logprobs_text" else f"##final score: {tok}"
        lp = None
        if req.get("logprobs") and mode == "bad_grade":
            lp = {"content": [{"token": "7", "logprob": -0.01, "bytes": [55], "top_logprobs": [
                {"token": "7", "logprob": -0.01, "bytes": [55]}, {"token": "8", "logprob": -5.0, "bytes": [56]}]}]}
        elif req.get("logprobs") and mode not in ("no_logprobs", "no_logprobs_text"):
            toks = _logprob_tokens(content, distribution_for(prompt), structured)
            n_top = max(int(req.get("top_logprobs") or 0), 1)
            for t in toks:
                t["top_logprobs"] = t["top_logprobs"][:n_top]
            lp = {"content": toks}
        used = (self.o.reasoning_tokens if reasoning else 0) + max(1, len(content) // 4)
        return {"index": index, "message": {"role": "assistant", "content": content}, "logprobs": lp,
                "finish_reason": "stop"}, used

    def answer(self, req: dict, mode: str = "ok") -> tuple[int, dict, dict]:
        """(status, JSON body, headers) of one chat-completions request."""
        try:
            prompt = "\n".join(m["content"] for m in req["messages"])
        except (KeyError, TypeError):
            return _error(400, "bad request: need JSON with messages")
        rejected = self.reject(req)
        if rejected:
            return rejected
        n = int(req.get("n") or 1)
        choices, used = zip(*(self.choice(req, prompt, i, mode) for i in range(n)))
        ptoks = max(1, len(prompt) // 4)
        usage = {"prompt_tokens": ptoks, "completion_tokens": sum(used), "total_tokens": ptoks + sum(used)}
        if self.is_reasoning(str(req.get("model", ""))):
            usage["completion_tokens_details"] = {"reasoning_tokens": self.o.reasoning_tokens * n}
        return 200, {"id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()),
                     "model": req.get("model", "local"), "choices": list(choices), "usage": usage}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *a) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes | dict, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            return bool(r) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:  # noqa: N802
        o = self.server.owner
        path = urlsplit(self.path).path.rstrip("/")
        with o.lock:
            o.api_calls[f"GET {re.sub(r'/(file|batch)_[^/]+', '/{id}', path)}"] += 1
        self._send(*o.files_and_batches.get(path, parse_qs(urlsplit(self.path).query)))

    def do_POST(self) -> None:  # noqa: N802
        o = self.server.owner
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.endswith("/chat/completions") and url.path.startswith(("/v1/", "/openai/", "/chat/")):
            self._chat(raw, url)
            return
        with o.lock:
            o.api_calls[f"POST {re.sub(r'/(file|batch)_[^/]+', '/{id}', url.path.rstrip('/'))}"] += 1
        answer = o.files_and_batches.post(url.path.rstrip("/"), raw, self.headers.get("Content-Type", ""))
        if url.path.rstrip("/") == "/v1/batches":
            time.sleep(o.batch_create_sleep)  # created already: a client that gives up first must not create twice
        self._send(*answer)

    def _chat(self, raw: bytes, url) -> None:
        o = self.server.owner
        if "/wrong/" in url.path:
            self._send(404, {"error": {"message": "not found"}})
            return
        try:
            req = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "bad request: need JSON with messages"}})
            return
        mode = o._next_mode()
        with o.lock:
            o.received += 1
            o.last_request, o.last_path, o.last_headers = req, self.path, dict(self.headers)
            o.request_times.append(time.monotonic())
        time.sleep(o.latency if mode != "timeout" else o.timeout_sleep)
        if self._client_gone():
            with o.lock:
                o.aborted += 1
            self.close_connection = True
            return
        if mode.startswith("429") or mode in ("500", "malformed"):
            self._send(*_failure(mode))
            return
        code, body, headers = o.grader.answer(req, mode)
        self._send(code, body, headers)
        if code == 200:
            prompt = "\n".join(m["content"] for m in req["messages"])
            with o.lock:
                o.completed += 1
                o.per_prompt[prompt_key(prompt)] += 1


def _failure(mode: str) -> tuple[int, bytes | dict, dict[str, str]]:
    if mode == "429":
        return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}
    if mode == "429_date":  # a whole second at least: an HTTP-date has no fractions
        when = math.ceil(time.time() + 1.0)
        return 429, {"error": {"message": "rate limited"}}, {"Retry-After": email.utils.formatdate(when, usegmt=True)}
    if mode == "429_ms":  # OpenAI sends both; the milliseconds are the precise one
        return 429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "400", "Retry-After": "1"}
    if mode == "429_long":
        return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "3600"}
    if mode == "500":
        return 500, {"error": {"message": "internal error"}}, {}
    return 200, b'{"choices": [{"message": {"content": "2"', {}  # malformed


class FilesAndBatches:
    """/v1/files and /v1/batches, in memory."""

    def __init__(self, owner: "OpenAIServer"):
        self.o = owner
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.polls: Counter[str] = Counter()

    def _file(self, data: bytes, name: str, purpose: str) -> dict:
        fid = f"file_{len(self.files) + 1:04d}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": name, "purpose": purpose, "status": "processed", "_data": data}
        return {k: v for k, v in self.files[fid].items() if k != "_data"}

    def post(self, path: str, raw: bytes, ctype: str) -> tuple[int, dict, dict]:
        with self.o.lock:
            if path == "/v1/files":
                return self._upload(raw, ctype)
            if path == "/v1/batches":
                return self._create(json.loads(raw or b"{}"))
            m = re.fullmatch(r"/v1/batches/([^/]+)/cancel", path)
            if m and m.group(1) in self.batches:
                self.batches[m.group(1)]["status"] = "cancelled"
                return 200, self._public(self.batches[m.group(1)]), {}
        return _error(404, f"no route POST {path}")

    def _upload(self, raw: bytes, ctype: str) -> tuple[int, dict, dict]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        if "file" not in parts or "purpose" not in parts:
            return _error(400, "multipart upload needs the fields 'file' and 'purpose'")
        data = parts["file"].get_payload(decode=True)
        purpose = parts["purpose"].get_payload(decode=True).decode()
        self.o.uploads.append(data)
        return 200, self._file(data, parts["file"].get_filename() or "upload", purpose), {}

    def _create(self, req: dict) -> tuple[int, dict, dict]:
        fid = req.get("input_file_id")
        if fid not in self.files:
            return _error(400, f"input_file_id {fid!r} not found", "input_file_id")
        if req.get("endpoint") != "/v1/chat/completions" or req.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h", "endpoint")
        bid = f"batch_{len(self.batches) + 1:04d}"
        n = sum(1 for x in self.files[fid]["_data"].splitlines() if x.strip())
        self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                             "input_file_id": fid, "completion_window": "24h", "status": "validating",
                             "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                             "request_counts": {"total": n, "completed": 0, "failed": 0},
                             "metadata": req.get("metadata")}
        return 200, self._public(self.batches[bid]), {}

    @staticmethod
    def _public(b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    def get(self, path: str, query: dict) -> tuple[int, bytes | dict, dict] | tuple[int, bytes, dict, str]:
        with self.o.lock:
            m = re.fullmatch(r"/v1/files/([^/]+)/content", path)
            if m and m.group(1) in self.files:
                return 200, self.files[m.group(1)]["_data"], {}, "application/octet-stream"
            m = re.fullmatch(r"/v1/batches/([^/]+)", path)
            if m and m.group(1) in self.batches:
                for b in self.batches.values():  # every batch moves on, polled or abandoned, as on the real API
                    self._advance(b)
                return 200, self._public(self.batches[m.group(1)]), {}
            if path == "/v1/batches":
                data = [self._public(b) for b in sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)]
                return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": False}, {}
        return _error(404, f"no route GET {path}")

    def _advance(self, b: dict) -> dict:
        """One tick (a poll of any batch): the batch moves one status step every `batch_polls_per_step` ticks."""
        self.polls[b["id"]] += 1
        if b["status"] in BATCH_STEPS[:-1] and self.polls[b["id"]] % self.o.batch_polls_per_step == 0:
            b["status"] = BATCH_STEPS[BATCH_STEPS.index(b["status"]) + 1]
            if b["status"] == "completed":
                self._run(b)
        return b

    def _run(self, b: dict) -> None:
        """Grade every line (billed once per successful line), write the output and error files."""
        ok, bad = [], []
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["_data"].splitlines() if x.strip()]
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if self.o.batch_expire_after is not None and i >= self.o.batch_expire_after:
                bad.append({"id": f"req_{i}", "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                      "before the completion window expired."}})
                continue
            code = self.o.batch_line_errors.get(i)
            if code is None:
                code, body, _ = self.o.grader.answer(line["body"])
            else:
                body = {"error": {"message": "injected failure", "type": "server_error" if code >= 500 else
                                  "invalid_request_error"}}
            rec = {"id": f"req_{i}", "custom_id": cid, "response": {"status_code": code, "request_id": f"r{i}",
                                                                    "body": body}, "error": None}
            (ok if code == 200 else bad).append(rec)
            if code == 200:
                self.o.batch_per_prompt[prompt_key("\n".join(m["content"] for m in line["body"]["messages"]))] += 1
        dump = lambda recs: "".join(json.dumps(r) + "\n" for r in recs).encode()  # noqa: E731
        b["output_file_id"] = self._file(dump(ok), "output.jsonl", "batch_output")["id"] if ok else None
        b["error_file_id"] = self._file(dump(bad), "errors.jsonl", "batch_output")["id"] if bad else None
        b["request_counts"] = {"total": len(lines), "completed": len(ok), "failed": len(bad)}
        if self.o.batch_expire_after is not None:
            b["status"] = "expired"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "OpenAIServer"

    def handle_error(self, request, client_address) -> None:
        """A client killed mid-request (the tests do that on purpose) resets its socket: not an error here."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class OpenAIServer:
    """Start with `with OpenAIServer(...) as s:`; bound to 127.0.0.1 on a free port."""

    def __init__(self, latency: float = 0.0, mode: str = "ok", timeout_sleep: float = 2.0,
                 reasoning: bool | None = None, reasoning_tokens: int = 64, batch_polls_per_step: int = 1,
                 batch_line_errors: dict[int, int] | None = None, batch_expire_after: int | None = None,
                 batch_create_sleep: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.latency, self.default_mode, self.timeout_sleep = latency, mode, timeout_sleep
        self.reasoning, self.reasoning_tokens = reasoning, reasoning_tokens
        self.batch_polls_per_step = batch_polls_per_step
        self.batch_line_errors = dict(batch_line_errors or {})
        self.batch_expire_after = batch_expire_after
        self.batch_create_sleep = batch_create_sleep
        self.lock = threading.Lock()
        self._script: deque[str] = deque()
        self.received = self.completed = self.aborted = 0
        self.last_request: dict | None = None  # the last well-formed request body, for wire-level checks
        self.last_path: str | None = None
        self.last_headers: dict[str, str] = {}
        self.request_times: list[float] = []
        self.per_prompt: Counter[str] = Counter()  # live answers per prompt
        self.batch_per_prompt: Counter[str] = Counter()  # batch lines answered (billed) per prompt
        self.api_calls: Counter[str] = Counter()  # files / batches calls by route
        self.uploads: list[bytes] = []
        self.grader = Grader(self)
        self.files_and_batches = FilesAndBatches(self)
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None

    def script(self, modes: Iterable[str]) -> None:
        """Behaviours for the next chat requests, in order; then back to the default mode."""
        modes = list(modes)
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown modes {bad}")
        with self.lock:
            self._script.extend(modes)

    def _next_mode(self) -> str:
        with self.lock:
            return self._script.popleft() if self._script else self.default_mode

    def paid(self) -> Counter[str]:
        """Answers billed per prompt, live and batch together."""
        with self.lock:
            return self.per_prompt + self.batch_per_prompt

    def start(self, port: int = 0) -> "OpenAIServer":
        self._srv = _Server(("127.0.0.1", port), _Handler)
        self._srv.owner = self
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._srv is not None
        return self._srv.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def stop(self) -> None:
        if self._srv:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *a: Any) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--mode", default="ok", choices=MODES)
    a = ap.parse_args()
    srv = OpenAIServer(latency=a.latency, mode=a.mode).start(a.port)
    print(f"PORT {srv.port}", flush=True)
    try:
        while True:
            line = sys.stdin.readline()
            if not line:  # parent closed stdin: stop
                break
            if line.strip() == "stats":
                print(json.dumps({"received": srv.received, "completed": srv.completed, "aborted": srv.aborted}),
                      flush=True)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
