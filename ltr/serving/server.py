"""Run the ranking service with uvicorn: `serve("models:/ltr-ranker@champion", port=8000, features_dir=...)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .model import ServingError


def run_dir_settings(run_dir: str | Path) -> dict[str, Any]:
    """create_app settings of a pipeline run dir (ltr.pipeline.RunPaths): RUN/features, RUN/dataset and
    RUN/served_logs; parts that are absent are left out. The cross-encoder is not among them: the
    registered model carries the one chosen at training time, so no folder name is guessed here."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ServingError(f"run_dir={run_dir} does not exist. Fix: pass the --out directory of `ltr run`, or "
                           "--products DATASET_DIR to serve a catalog without a run.")
    out: dict[str, Any] = {"log_dir": root / "served_logs"}
    if (root / "features" / "manifest.json").exists():
        out["features_dir"] = root / "features"
    if (root / "dataset" / "products.parquet").exists():
        out["products"] = root / "dataset"
    return out


def check_port(port: Any) -> int:
    """A TCP port uvicorn can bind, checked before the (slow) model load."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServingError(f"port must be 0..65535, got {port!r}. Fix: e.g. --port 8000.")
    return port


def one_torch_thread_unless_torch_scores(live: Any) -> None:
    """With the cross-encoder in ONNX Runtime (its own threads), torch's only work on the request path is a
    new query's embedding: a pass too small to split. On 2 cores two torch threads measured 30 ms a query
    against 15.6 ms for one (threads sleep at each barrier, OMP_WAIT_POLICY=PASSIVE, see ltr/data)."""
    import torch

    if live.batcher is None or not live.ondemand.ce_backend.startswith("torch"):
        torch.set_num_threads(1)


def freeze_startup_objects() -> None:
    """Move everything loaded so far (catalog, indexes, models, embeddings: millions of objects that live as
    long as the process) out of the garbage collector's view (`gc.freeze`), so a full collection triggered
    by request garbage scans only what requests made, not the whole startup heap."""
    import gc

    gc.freeze()  # no collect first: it took ~0.5 s of the start-up for the little garbage loading leaves


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8000, features_dir: str | Path | None = None,
          products: pd.DataFrame | str | Path | None = None, log_level: str = "info",
          run_dir: str | Path | None = None, workbench_token: str | None = None, **app_kwargs: Any) -> None:
    """Build the app (model, store, catalog, encoders: all loaded before the port opens) and serve it.

    One worker process: the model and the cross-encoder cache live in it; scale out with more replicas
    behind a load balancer rather than with uvicorn workers that would each load the models.
    `app_kwargs` go to `ltr.serving.app.create_app` (cross_encoder, bi_encoder, max_candidates, log_dir,
    tracking_uri, on_missing, serving, ...). `run_dir` fills features_dir / products / log_dir from a pipeline
    run directory (explicit arguments win). create_app checks the bi-encoder against the model's record, so a
    wrong one fails before the port opens.
    """
    import uvicorn

    from .app import create_app

    check_port(port)
    if run_dir is not None:
        rd = run_dir_settings(run_dir)
        features_dir = features_dir if features_dir is not None else rd.pop("features_dir", None)
        products = products if products is not None else rd.pop("products", None)
        rd.pop("features_dir", None)
        rd.pop("products", None)
        for k, v in rd.items():
            app_kwargs.setdefault(k, v)
    app = create_app(model_uri, features_dir, products, **app_kwargs)
    from .workbench import mount_workbench
    mount_workbench(app, app.state.service, run_dir=run_dir, token=workbench_token)
    one_torch_thread_unless_torch_scores(app.state.service.live)
    freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=10)


__all__ = ["check_port", "freeze_startup_objects", "one_torch_thread_unless_torch_scores", "run_dir_settings",
           "serve"]
