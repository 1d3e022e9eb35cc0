"""A first-in, first-out gate in front of the first phase: at most `slots` requests compute at once.

Why: the first phase is Python under one interpreter lock, so eight requests computing at once do not run
eight times faster; they share one core, each finishing only when all are nearly done (processor sharing),
and the interpreter switches between them every few milliseconds. Taken in arrival order, one at a time,
each request's wait is the work queued ahead of it: the same throughput, a tighter tail. The cross-encoder
wait is outside the gate (other requests compute meanwhile), and so are the final phase and the response.
"""
from __future__ import annotations

import threading
from collections import deque


class FifoGate:
    """`with gate:` ... ; waiters are let in in arrival order (a released slot is handed to the oldest)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Event] = deque()

    def __enter__(self) -> FifoGate:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return self
            ev = threading.Event()
            self._waiters.append(ev)
        ev.wait()  # the releaser handed its slot to us
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)


__all__ = ["FifoGate"]
