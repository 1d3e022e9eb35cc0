"""Hot reload: the service follows its registry alias and swaps to a new version without a restart.

A thread asks the registry every `poll_s` seconds which version the alias (e.g. `champion`) points at. When
it moves, the new version is loaded and warmed on this thread, off the request path, and handed to `swap`,
which replaces the live model whole (ltr/serving/live.py). Anything that fails on the way (the registry
unreachable, the tracking store file gone, a new version whose parts are missing or do not match) leaves the
old version serving, and `status()` (shown by /health) says what failed and when; the next poll tries again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .live import LiveModel
from .model import LoadedModel, public

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelWatcher:
    """Polls `lm`'s alias; `load()` builds the new LiveModel, `swap(new)` makes it live."""

    def __init__(self, lm: LoadedModel, load: Callable[[], LiveModel], swap: Callable[[LiveModel], None],
                 poll_s: float) -> None:
        self.name, self.alias, self.version, self.tracking_uri = lm.name, lm.alias, lm.version, lm.tracking_uri
        self._load, self._swap, self.poll_s = load, swap, poll_s
        self._state: dict[str, Any] = {"last_check": None, "error": None, "error_at": None, "reloads": 0}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one check at a time (the thread, a test, an admin call)
        self._thread = None
        if self.following and poll_s > 0:
            self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
            self._thread.start()

    @property
    def following(self) -> bool:
        return bool(self.name and self.alias)

    def status(self) -> dict[str, Any]:
        follows = f"models:/{self.name}@{self.alias}" if self.following else None
        return {"follows": follows, "poll_s": self.poll_s if follows else None, "version": self.version,
                **self._state}

    def _registry_version(self) -> str:
        from mlflow import MlflowClient

        uri = self.tracking_uri or ""
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            raise RuntimeError("the tracking store file is missing")  # sqlite would create an empty one
        return str(MlflowClient(tracking_uri=self.tracking_uri).get_model_version_by_alias(self.name,
                                                                                       self.alias).version)

    def check(self) -> bool:
        """One poll: True when a new version was loaded and swapped in."""
        if not self.following:
            return False
        with self._lock:
            self._state["last_check"] = _now()
            try:
                version = self._registry_version()
            except Exception as e:  # noqa: BLE001 - any registry failure: keep serving the old version
                return self._failed(f"registry unreachable ({type(e).__name__}: {str(e)[:200]}); "
                                    f"version {self.version} keeps serving")
            if version == self.version:
                self._state["error"] = None
                return False
            try:
                new = self._load()
            except Exception as e:  # noqa: BLE001
                return self._failed(f"version {version} could not be loaded ({type(e).__name__}: {str(e)[:300]}); "
                                    f"version {self.version} keeps serving")
            self._swap(new)
            log.info("model %s@%s: version %s -> %s", self.name, self.alias, self.version, new.version)
            self.version = new.version
            self._state.update(error=None, error_at=None, reloads=self._state["reloads"] + 1)
            return True

    def _failed(self, msg: str) -> bool:
        log.warning("model reload: %s", msg)
        self._state.update(error=public(msg), error_at=_now())
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()


__all__ = ["ModelWatcher"]
