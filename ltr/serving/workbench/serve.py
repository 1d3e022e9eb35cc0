"""`ltr workbench --run-dir D`: the workbench on a run, with the service built in this process, so a person
can look at a run without a ranking service deployed. It is the same service code, started without a
served-feature log (nobody's searches go through it) and bound to loopback unless told otherwise.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .core import TOKEN_ENV


def run_model(run_dir: Path) -> str:
    """The model the run registered (reports/summary.json), else the default registry name's champion."""
    try:
        return json.loads((run_dir / "reports" / "summary.json").read_text())["model_uri"]
    except (OSError, ValueError, KeyError):
        return "models:/ltr-ranker@champion"


def challenger_of(model_uri: str, tracking_uri: str | None) -> str | None:
    """models:/NAME@challenger when the registry has that alias, else None (the page offers baselines)."""
    if not model_uri.startswith("models:/") or "@" not in model_uri:
        return None
    name = model_uri[len("models:/"):].split("@", 1)[0]
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, "challenger")
    except Exception:  # noqa: BLE001 - no such alias or model: no challenger
        return None
    return f"models:/{name}@challenger"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open; the token rides in the fragment, which the browser never sends to a server."""
    return f"http://{host}:{port}/workbench" + (f"#token={token}" if token else "")


def open_workbench(run_dir: str | Path, model: str | None = None, challenger: str | None = "auto",
                   host: str = "127.0.0.1", port: int = 8090, token: str | None = None,
                   tracking_uri: str | None = None, log_level: str = "warning", **app_kwargs: Any) -> None:
    """Build the service for `run_dir`, mount the workbench, serve until stopped. token: '' or None reads
    $LTR_WORKBENCH_TOKEN (absent: read-only); 'generate' makes one and prints it in the page's address."""
    import uvicorn

    from ..app import create_app
    from ..server import check_port, freeze_startup_objects, one_torch_thread_unless_torch_scores, run_dir_settings
    from . import mount_workbench

    check_port(port)
    root = Path(run_dir)
    settings = run_dir_settings(root)
    settings.pop("log_dir", None)  # nobody's searches: nothing to log
    token = token or os.environ.get(TOKEN_ENV) or None
    if token == "generate":
        token = secrets.token_urlsafe(18)
    if not is_loopback(host):
        print(f"warning: serving the workbench on {host}, not loopback: anyone who can reach it can read the run.")
    model = model or run_model(root)
    if challenger == "auto":
        challenger = challenger_of(model, tracking_uri)
    app = create_app(model, settings.pop("features_dir", None), settings.pop("products", None),
                     tracking_uri=tracking_uri, challenger=challenger, **settings, **app_kwargs)
    mount_workbench(app, app.state.service, run_dir=root, token=token)
    one_torch_thread_unless_torch_scores(app.state.service.live)  # as `ltr serve` starts
    freeze_startup_objects()
    print(f"workbench: {page_url(host, port, token)}" + ("" if token else "  (read-only: no token)"), flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


__all__ = ["challenger_of", "is_loopback", "open_workbench", "page_url", "run_model"]
