"""Where a figure comes from: commit, date and machine, the same three keys in every bench JSON and run report.

A speed or quality figure means little without the code and hardware that produced it, and `bench.report`
prints these keys under each table of docs/results.md. Figures are dated by commit and date, never by who
measured them: no user or host name is recorded. Standard library only, so any bench can call it first.

    res = {"benchmark": "...", **stamp(), ...}
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """Short HEAD, with '+dirty' when tracked files differ from it (the figures are then of uncommitted code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict:
    """Cores this process may use, total RAM (GiB), CPU model and architecture: what a timing depends on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "ram_gb": _ram_gb(), "cpu": _cpu_model(), "arch": platform.machine()}


def stamp() -> dict:
    """{"commit", "date" (UTC, ISO), "machine"}: spread into a bench result or a run summary."""
    return {"commit": commit(), "date": dt.datetime.now(dt.timezone.utc).date().isoformat(), "machine": machine()}


__all__ = ["stamp", "commit", "machine"]
