"""The relevance workbench: why a product ranks where it does, and a person's correction of its grade.

    mount_workbench(app, app.state.service, run_dir="runs/default", token=None)   # GET /workbench

A page on the ranking service itself (`ltr serve`), or on a service built in-process for a run directory
(`ltr workbench --run-dir D`), so what it shows is exactly what a shopper would be served. It ranks through
the service's phases but apart from shoppers' traffic (no served log, no metrics, no interleaving), reads
the run directory, and writes only human labels, through labels.human, with their provenance.

Safe by default: bound to loopback by its commands; read-only unless a token is given (`token`, else
$LTR_WORKBENCH_TOKEN), sent by the page in a header; every catalog string escaped (Jinja2 autoescape,
textContent in the script); nothing loaded from outside the service (Plotly from its own Python package).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import TOKEN_ENV, Workbench


def mount_workbench(app: Any, state: Any, run_dir: str | Path | None = None, token: str | None = None) -> Workbench:
    """Add /workbench to an app of ltr.serving.app.create_app; returns the Workbench for tests and benches."""
    from .router import mount

    wb = Workbench(state, run_dir, token)
    mount(app, wb)
    return wb


__all__ = ["TOKEN_ENV", "Workbench", "mount_workbench"]
