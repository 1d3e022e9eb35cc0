"""Run the ranking service with uvicorn: `serve("models:/ltr-ranker@champion", port=8000, features_dir=...)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def run_dir_settings(run_dir: str | Path) -> dict[str, Any]:
    """create_app settings of a pipeline run dir (ltr.pipeline.RunPaths): RUN/features, RUN/dataset,
    RUN/cross_encoder/llm_fold0 and RUN/served_logs; parts that are absent are left out."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"run_dir={run_dir} does not exist. Fix: pass the --out directory of `ltr run`.")
    out: dict[str, Any] = {"log_dir": root / "served_logs"}
    if (root / "features" / "manifest.json").exists():
        out["features_dir"] = root / "features"
    if (root / "dataset" / "products.parquet").exists():
        out["products"] = root / "dataset"
    if (root / "cross_encoder" / "llm_fold0" / "config.json").exists():
        out["cross_encoder"] = root / "cross_encoder" / "llm_fold0"
    return out


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8000, features_dir: str | Path | None = None,
          products: pd.DataFrame | str | Path | None = None, log_level: str = "info",
          run_dir: str | Path | None = None, **app_kwargs: Any) -> None:
    """Build the app (model, store, catalog, encoders: all loaded before the port opens) and serve it.

    One worker process: the model and the cross-encoder cache live in it; scale out with more replicas
    behind a load balancer rather than with uvicorn workers that would each load the models.
    `app_kwargs` go to `ltr.serving.app.create_app` (cross_encoder, bi_encoder, max_candidates, log_dir,
    tracking_uri, on_missing, ...). `run_dir` fills features_dir / products / cross_encoder / log_dir from
    a pipeline run directory (explicit arguments win).
    """
    import uvicorn

    from .app import create_app

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port!r}. Fix: e.g. --port 8000.")
    if run_dir is not None:
        rd = run_dir_settings(run_dir)
        features_dir = features_dir if features_dir is not None else rd.pop("features_dir", None)
        products = products if products is not None else rd.pop("products", None)
        rd.pop("features_dir", None)
        rd.pop("products", None)
        for k, v in rd.items():
            app_kwargs.setdefault(k, v)
    app = create_app(model_uri, features_dir, products, **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


__all__ = ["serve"]
