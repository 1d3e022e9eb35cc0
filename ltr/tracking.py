"""MLflow tracking: every training run logs its config, data fingerprints, label source, metrics, feature
importance, plots and the model (with signature and feature list); the chosen model is registered and
gets the alias `champion`; `load_model("models:/NAME@champion")` gives back a ranker that knows its features.

Tracking URI: argument > $MLFLOW_TRACKING_URI > `DEFAULT_TRACKING_URI`, a sqlite store because MLflow 3
refuses a plain file store; other defaults (CLI options, run configs, the service) import that constant
instead of spelling the URI, so moving the store is a one-line change. Artifacts of a new experiment go
next to the database (`artifacts/`) unless an artifact location is given, so a store directory can be
copied or deleted as one piece.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# numpy / pandas / mlflow are imported where used: the CLI imports this module for DEFAULT_TRACKING_URI
# while building its options, and `ltr --help` must not wait for pandas.
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "ltr"
CHAMPION = "champion"


class TrackingError(RuntimeError):
    """Tracking misconfigured or a model URI that cannot be loaded; the message says how to fix it."""


def _quiet() -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def setup_tracking(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                   artifact_location: str | None = None) -> str:
    """Point MLflow at the tracking store and select (or create) `experiment`; returns its id."""
    _quiet()
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_location is None:
            artifact_location = (db.parent / "artifacts").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
    else:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {experiment!r} is deleted. Fix: restore it or use another name.")
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# MLflow hands the tracking URI and the active experiment to subprocesses through these; they are the
# public record of what a block has to put back.
_TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextmanager
def using_tracking(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                   artifact_location: str | None = None) -> Iterator[str]:
    """`setup_tracking` for a block, then back to the caller's store and experiment, so a test or notebook
    cell that tracks into a temp store does not leave the process logging there.

    MLflow has no public way to forget an active experiment: when the caller had none, the block's
    experiment stays selected in-process until the next `setup_tracking` / `mlflow.set_experiment`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    prev_uri = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    prev_env = {k: os.environ.get(k) for k in _TRACKING_ENV}
    try:
        yield setup_tracking(tracking_uri, experiment, artifact_location)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(prev_uri)  # None: back to "not set", as before the block
        for k, v in prev_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if prev_uri is not None and prev_env["MLFLOW_EXPERIMENT_ID"] is not None:
            # a caller's experiment that has gone since must not turn a clean exit into an error
            with suppress(MlflowException):
                mlflow.set_experiment(experiment_id=prev_env["MLFLOW_EXPERIMENT_ID"])


def frame_fingerprint(df: pd.DataFrame) -> str:
    """Content hash of a frame (values, column names and dtypes; row order matters)."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def metric_key(name: str) -> str:
    """MLflow metric names cannot hold '@': 'ndcg@10/head' -> 'ndcg_at_10/head'."""
    return name.replace("@", "_at_")


def log_metrics(metrics: Mapping[str, float], prefix: str = "", step: int | None = None) -> None:
    import mlflow
    import numpy as np

    clean = {metric_key(prefix + k): float(v) for k, v in metrics.items()
             if v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and len(str(v)) > 250:
            continue  # long lists (feature lists) go to the config artifact
        else:
            out[key] = v
    return out


def log_config(cfg: Any, name: str = "config.json") -> None:
    """Log a pydantic config as flat params and as a JSON artifact."""
    import mlflow

    d = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    mlflow.log_params({k: ("None" if v is None else v) for k, v in _flatten(d).items()})
    mlflow.log_dict(d, name)


def _kind(model) -> str:
    from .rankers import LGBMLambdaMART, XGBLambdaMART

    if isinstance(model, XGBLambdaMART):
        return "xgboost"
    if isinstance(model, LGBMLambdaMART):
        return "lightgbm"
    raise TrackingError(f"cannot log a {type(model).__name__}. Fix: log an ltr.rankers ranker.")


def feature_importance_figure(importance: Mapping[str, float], top: int = 25):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: (-kv[1], kv[0]))[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("gain")
    ax.set_title("feature importance")
    fig.tight_layout()
    return fig


def log_ranker(model, example: pd.DataFrame, name: str = "model") -> Any:
    """Log the fitted ranker as an MLflow model with a signature and its feature list; returns ModelInfo."""
    _quiet()
    import mlflow
    from mlflow.models import infer_signature

    kind = _kind(model)
    feats = list(model.feature_names_)
    ex = example.reindex(columns=feats).head(5).astype("float64")
    sig = infer_signature(ex, model.predict(ex))
    meta = {"ltr_ranker": kind, "features": feats}
    # explicit requirements: MLflow's inference imports the model in a subprocess (slow, and noisy)
    if kind == "xgboost":
        import xgboost
        info = mlflow.xgboost.log_model(model.model_, name=name, signature=sig, metadata=meta, model_format="ubj",
                                        pip_requirements=[f"xgboost=={xgboost.__version__}"])
    else:
        import lightgbm
        # the Booster (LightGBM's own text format): MLflow 3 refuses to unpickle an LGBMRanker (skops)
        info = mlflow.lightgbm.log_model(model._booster(), name=name, signature=sig, metadata=meta,
                                         pip_requirements=[f"lightgbm=={lightgbm.__version__}"])
    mlflow.log_dict({"features": feats, "ranker": kind}, "features.json")
    return info


def log_training_run(result, run_name: str | None = None, label_source: str | None = None,
                     extra_params: Mapping[str, Any] | None = None, extra_metrics: Mapping[str, float] | None = None,
                     figures: Mapping[str, Any] | None = None, nested: bool = False,
                     log_model: bool = True) -> tuple[str, str | None]:
    """Log a `ltr.train.TrainResult` as one MLflow run; returns (run_id, model_uri or None)."""
    _quiet()
    import matplotlib.pyplot as plt
    import mlflow

    cfg = result.config
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        log_config(cfg)
        if extra_params:
            mlflow.log_params(dict(extra_params))
        mlflow.set_tags({"label_source": label_source or cfg.label_source, "ranker": cfg.model.kind,
                         "train_fingerprint": frame_fingerprint(result.train_frame),
                         "test_fingerprint": frame_fingerprint(result.test_frame)})
        mlflow.log_params({"n_features": len(result.features), "train_rows": len(result.train_frame),
                           "test_rows": len(result.test_frame),
                           "best_iteration": getattr(result.model, "best_iteration_", -1)})
        log_metrics(result.metrics)
        if extra_metrics:
            log_metrics(extra_metrics)
        imp = result.model.feature_importance("gain")
        mlflow.log_dict(imp, "feature_importance.json")
        fig = feature_importance_figure(imp)
        mlflow.log_figure(fig, "feature_importance.png")
        plt.close(fig)
        for fname, f in (figures or {}).items():
            mlflow.log_figure(f, fname)
            plt.close(f)
        mlflow.log_text(result.per_query.to_csv(), "per_query_metrics.csv")
        uri = log_ranker(result.model, result.test_frame).model_uri if log_model else None
        return run.info.run_id, uri


def register_model(model_uri: str, name: str, alias: str = CHAMPION) -> str:
    """Register `model_uri` under `name` and move `alias` to the new version; returns the version."""
    _quiet()
    import mlflow
    from mlflow import MlflowClient

    mv = mlflow.register_model(model_uri, name)
    MlflowClient().set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def load_model(uri: str):
    """Load a ranker logged by `log_ranker` (e.g. 'models:/NAME@champion'); it knows `feature_names_`."""
    _quiet()
    import mlflow

    from .rankers import LGBMLambdaMART, XGBLambdaMART

    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as e:
        raise TrackingError(f"cannot resolve model {uri!r} ({type(e).__name__}: {e}). Fix: check the tracking "
                            "URI (MLFLOW_TRACKING_URI), the model name and alias, e.g. models:/NAME@champion.") from e
    meta = info.metadata or {}
    kind, feats = meta.get("ltr_ranker"), meta.get("features")
    if kind == "xgboost":
        return XGBLambdaMART.from_fitted(mlflow.xgboost.load_model(uri), feats)
    if kind == "lightgbm":
        return LGBMLambdaMART.from_fitted(mlflow.lightgbm.load_model(uri), feats)
    raise TrackingError(f"model {uri!r} was not logged by ltr.tracking.log_ranker (no 'ltr_ranker' metadata). "
                        "Fix: log rankers with ltr.tracking.log_ranker.")
