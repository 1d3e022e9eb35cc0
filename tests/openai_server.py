"""A real local HTTP server speaking the OpenAI chat-completions protocol, with logprobs.

A test double for a paid LLM API only: real sockets, real HTTP/1.1 (keep-alive), real JSON. It answers
a deterministic grade per (query, product) prompt with a top-logprobs distribution, and can inject
failures: 429 (with Retry-After), 500, timeouts (answers after the client gave up), malformed JSON, a
grade token outside 0-3, missing logprobs. It counts every request, every completed response, the
completed responses per prompt, and requests whose client disconnected before the answer (aborted).

In a test:   with OpenAIServer(latency=0.05) as srv: ... srv.base_url ... srv.completed
As a process: python tests/openai_server.py --port 0 --latency 0.05   (prints "PORT <n>" then serves)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import select
import socket
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable

MODES = ("ok", "429", "500", "timeout", "malformed", "bad_grade", "no_logprobs", "no_logprobs_text")


def grade_for(text: str) -> int:
    """The server's deterministic 'opinion' of a prompt: same prompt, same grade, every run."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 4


def distribution_for(text: str) -> list[float]:
    g = grade_for(text)
    p = [0.1, 0.1, 0.1, 0.1]
    p[g] = 0.7
    return p


def _completion(model: str, content: str, logprobs: dict | None, prompt_tokens: int) -> dict:
    return {"id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *a) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            return bool(r) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_POST(self) -> None:  # noqa: N802
        o = self.server.owner
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            req = json.loads(raw)
            messages = req["messages"]
            prompt = "\n".join(m["content"] for m in messages)
        except (ValueError, KeyError, TypeError):
            self._send(400, b'{"error": {"message": "bad request: need JSON with messages"}}')
            return
        mode = o._next_mode()
        with o.lock:
            o.received += 1
            o.last_request = req
        time.sleep(o.latency if mode != "timeout" else o.timeout_sleep)
        if self._client_gone():
            with o.lock:
                o.aborted += 1
            self.close_connection = True
            return
        model = req.get("model", "local")
        ptoks = max(1, len(prompt) // 4)
        if mode == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
        elif mode == "500":
            self._send(500, b'{"error": {"message": "internal error"}}')
        elif mode == "malformed":
            self._send(200, b'{"choices": [{"message": {"content": "2"')
        else:
            p = distribution_for(prompt)
            g = grade_for(prompt)
            tok = str(g) if mode != "bad_grade" else "7"
            tops = sorted(([str(k), math.log(v)] for k, v in enumerate(p)), key=lambda t: -t[1])
            tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops]
            tops.append({"token": " the", "logprob": math.log(1e-4), "bytes": list(b" the")})
            if mode == "bad_grade":
                tops = [{"token": "7", "logprob": -0.01, "bytes": [55]}, {"token": "8", "logprob": -5.0, "bytes": [56]}]
            n_top = int(req.get("top_logprobs") or 0)
            lp = None
            if req.get("logprobs") and mode not in ("no_logprobs", "no_logprobs_text"):
                lp = {"content": [{"token": tok, "logprob": tops[0]["logprob"], "bytes": list(tok.encode()),
                                   "top_logprobs": tops[:max(n_top, 1)]}]}
            content = tok if mode != "no_logprobs_text" else f"##final score: {tok}"
            body = json.dumps(_completion(model, content, lp, ptoks)).encode()
            self._send(200, body)
            with o.lock:
                o.completed += 1
                o.per_prompt[hashlib.sha1(prompt.encode()).hexdigest()] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "OpenAIServer"


class OpenAIServer:
    """Start with `with OpenAIServer(...) as s:`; bound to 127.0.0.1 on a free port."""

    def __init__(self, latency: float = 0.0, mode: str = "ok", timeout_sleep: float = 2.0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.latency, self.default_mode, self.timeout_sleep = latency, mode, timeout_sleep
        self.lock = threading.Lock()
        self._script: deque[str] = deque()
        self.received = self.completed = self.aborted = 0
        self.last_request: dict | None = None  # the last well-formed request body, for wire-level checks
        self.per_prompt: Counter[str] = Counter()
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None

    def script(self, modes: Iterable[str]) -> None:
        """Behaviours for the next requests, in order; then back to the default mode."""
        modes = list(modes)
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown modes {bad}")
        with self.lock:
            self._script.extend(modes)

    def _next_mode(self) -> str:
        with self.lock:
            return self._script.popleft() if self._script else self.default_mode

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
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._srv:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *a) -> None:
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
