"""What the `ltr` CLI prints besides its own lines and progress bars: one place, `configure(verbosity)`.

Quiet (the default): our loggers (`ltr`, `labels`, `features`, `bench`) at INFO, every other library at
WARNING, and the Python warnings of torch's ONNX export (TracerWarning and the like) and the deprecation
notes libraries leave for their own developers are not shown. `ltr -v` shows INFO from every library and
DEBUG from ours (plus whatever a library asked for on its own logger); `ltr -vv` shows DEBUG from all.

Why a handler filter rather than logger levels: a library may set its own logger's level at import (bm25s
does `logging.getLogger("bm25s").setLevel(logging.DEBUG)`), long after this runs; and a library may call
`logging.warning(...)` on the root logger (onnxruntime's `quantize_dynamic` does), which installs logging's
default stderr handler with no level of its own. Together they printed `DEBUG:bm25s:Building index from
tokens` in the middle of `ltr run`. Here the root logger gets one handler of ours (so `logging.warning` and
`basicConfig` add none later) that lets a record through by where it comes from and how severe it is, whatever
level its logger was given; a plain stderr handler some library put on the root logger earlier is replaced.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

OWN = ("ltr", "labels", "features", "bench")  # our top-level packages (and their loggers)
FORMAT = "%(levelname)s:%(name)s:%(message)s"  # logging's default, so a line says whose it is
_REPO = Path(__file__).resolve().parents[1]
_OWN_DIRS = tuple(str(_REPO / p) + os.sep for p in OWN)
# third-party messages that are advice to that library's users, not news about this run
_NOISE = (("onnxruntime", "Please consider to run pre-processing before quantization"),)
_TORCHISH = ("torch", "onnx", "onnxscript", "onnxruntime")  # packages of the ONNX export and its warnings
_DEV_NOTES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def is_own(logger_name: str) -> bool:
    return logger_name.split(".", 1)[0] in OWN


class QuietFilter(logging.Filter):
    """Let through our records at INFO and up, everyone else's at WARNING and up, minus known noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own(record.name):
            return record.levelno >= logging.INFO
        if record.levelno < logging.WARNING:
            return False
        msg = str(record.msg)
        return not any(part in record.pathname and msg.startswith(prefix) for part, prefix in _NOISE)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test runner swaps it per invocation)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


_HANDLER_NAME = "ltr-cli"
_torch_logs_set = False  # whether TORCH_LOGS is ours (configure_logging set it)


def configure_logging(verbosity: int = 0) -> logging.Handler:
    root = logging.getLogger()
    for h in list(root.handlers):  # ours from an earlier call, or logging.basicConfig's plain stderr handler
        if h.get_name() == _HANDLER_NAME or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(FORMAT))
    if verbosity <= 0:
        handler.addFilter(QuietFilter())
    root.addHandler(handler)
    root.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    for name in OWN:
        logging.getLogger(name).setLevel(logging.INFO if verbosity <= 0 else logging.DEBUG)
    _configure_torch_logs(verbosity)
    return handler


def _configure_torch_logs(verbosity: int) -> None:
    """torch logs through its own handlers (not the root logger's): its ONNX exporter's notes ("torchvision is
    not installed. Skipping torchvision::nms") are WARNINGs, shown only with -v. TORCH_LOGS is read when torch
    is imported; a user's own TORCH_LOGS wins."""
    global _torch_logs_set
    if verbosity > 0:
        if _torch_logs_set:  # an earlier quiet call in this process set it: undo
            os.environ.pop("TORCH_LOGS", None)
            logging.getLogger("torch.onnx").setLevel(logging.NOTSET)
            _torch_logs_set = False
        return
    if "TORCH_LOGS" not in os.environ:
        os.environ["TORCH_LOGS"] = "-onnx"  # "-name": that torch log at ERROR
        _torch_logs_set = True
    if _torch_logs_set and "torch" in sys.modules:  # torch read TORCH_LOGS already: set the level directly
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def quiet_warning(category: type[Warning], filename: str) -> bool:
    """True for a Python warning quiet mode does not show: anything torch's ONNX export (torch, onnx,
    onnxscript, onnxruntime) raises or defines (TracerWarning lives in torch.jit), and the deprecation notes
    (DeprecationWarning, FutureWarning) third-party code leaves for its own developers. Ours always show."""
    path = os.path.abspath(filename) if filename else ""
    if path.startswith(_OWN_DIRS):
        return False
    if category.__module__.split(".", 1)[0] in _TORCHISH:
        return True
    parts = Path(path).parts
    if any(p in parts for p in _TORCHISH) and "site-packages" in parts:
        return True
    return issubclass(category, _DEV_NOTES)


def configure_warnings(verbosity: int = 0) -> None:
    """Quiet mode drops `quiet_warning` warnings at display time (categories such as torch's TracerWarning
    cannot be named in a filter before torch is imported). An explicit -W / PYTHONWARNINGS is left alone."""
    shown = warnings.showwarning
    original = getattr(shown, "_ltr_wraps", None)  # set: an earlier quiet call in this process wrapped it
    if verbosity > 0 or sys.warnoptions:
        if original is not None:
            warnings.showwarning = original
        return
    if original is not None:
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not quiet_warning(category, filename):
            shown(message, category, filename, lineno, file, line)

    showwarning._ltr_wraps = shown  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def configure(verbosity: int = 0) -> None:
    """The CLI's output policy (module docstring); called once per `ltr` invocation, before any command."""
    configure_logging(verbosity)
    configure_warnings(verbosity)
