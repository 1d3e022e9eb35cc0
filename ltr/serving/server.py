"""Run the ranking service with uvicorn: `serve("models:/ltr-ranker@champion", port=8000, features_dir=...)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8000, features_dir: str | Path | None = None,
          products: pd.DataFrame | str | Path | None = None, log_level: str = "info",
          **app_kwargs: Any) -> None:
    """Build the app (model, store, catalog, encoders: all loaded before the port opens) and serve it.

    One worker process: the model and the cross-encoder cache live in it; scale out with more replicas
    behind a load balancer rather than with uvicorn workers that would each load the models.
    `app_kwargs` go to `ltr.serving.app.create_app` (cross_encoder, bi_encoder, max_candidates, log_dir,
    tracking_uri, on_missing, ...).
    """
    import uvicorn

    from .app import create_app

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port!r}. Fix: e.g. --port 8000.")
    app = create_app(model_uri, features_dir, products, **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


__all__ = ["serve"]
