"""Bounds in front of the service, checked before any work is done for a request.

`RequestLimits` is plain ASGI middleware, so it runs before FastAPI reads or parses a body and before a
request takes a worker thread:
  - body size: a declared Content-Length over the limit is answered 413 at once; a body without one
    (chunked) is counted as it arrives and refused with 413 as soon as it passes the limit, so a 5 MB
    body is never held, let alone parsed, whole;
  - load: at most `max_inflight` rank requests in progress; the next gets 503 with Retry-After instead of
    waiting in an unbounded queue (a load balancer retries it on another replica).
Both answers use the service's one error shape: {"detail": [{"loc", "msg", "type"}]}.
"""
from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

LIMITED_PATHS = ("/v1/rank",)


def _body(field: str, msg: str, kind: str) -> bytes:
    return json.dumps({"detail": [{"loc": ["body", field] if field else ["request"], "msg": msg,
                                   "type": kind}]}).encode()


async def _answer(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: body size (413) and requests in progress (503) on LIMITED_PATHS."""

    def __init__(self, app: Any, max_body_bytes: int, max_inflight: int, on_reject=None, register=None) -> None:
        self.app, self.max_body_bytes, self.max_inflight = app, max_body_bytes, max_inflight
        self.on_reject = on_reject or (lambda status: None)
        self.inflight = 0  # changed only on the event loop's thread
        if register is not None:  # Starlette builds middleware lazily: hand the instance to whoever reports on it
            register(self)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") not in LIMITED_PATHS:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = (f"the request body is over the limit of {self.max_body_bytes} bytes. Fix: send fewer "
                   "candidates or shorter ids (or raise serving.max_body_bytes).")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            self.on_reject(413)
            return await _answer(send, 413, _body("", too_big, "body_too_large"))
        if self.inflight >= self.max_inflight:
            self.on_reject(503)
            return await _answer(send, 503, _body("", f"the service is at its limit of {self.max_inflight} "
                                                  "requests in progress. Fix: retry after a second, or add a "
                                                  "replica.", "overloaded"), [(b"retry-after", b"1")])
        seen = 0

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body_bytes:
                    self.on_reject(413)
                    raise HTTPException(status_code=413, detail=[{"loc": ["request"], "msg": too_big,
                                                                  "type": "body_too_large"}])
            return msg

        self.inflight += 1
        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.inflight -= 1


__all__ = ["LIMITED_PATHS", "RequestLimits"]
