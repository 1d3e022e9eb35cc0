"""Resolve a registered ranker: the model, its registry version and feature list, and its cross-encoder.

A ranker that uses `ce_score` is only as good as the cross-encoder that produced that feature in
training, so the cross-encoder is looked up next to the model: an explicit directory wins, else the
`cross_encoder/` artifact of the model's MLflow run (what `features.crossencoder.fine_tune_cross_encoder`
logs when a run is active), else none (the caller decides whether a missing feature is an error).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CE_ARTIFACT = "cross_encoder"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")


class ServingError(ValueError):
    """The service (or evaluate) was configured wrongly; the message names the setting and the fix."""


@dataclass
class LoadedModel:
    """A ranker plus where it came from (shown by /health, written into every served-feature log line)."""

    ranker: Any
    uri: str
    features: list[str]
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    cross_encoder: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "name": self.name, "version": self.version, "alias": self.alias,
                "run_id": self.run_id, "n_features": len(self.features),
                "cross_encoder": str(self.cross_encoder) if self.cross_encoder else None}


def ensure_tracking_uri(tracking_uri: str | None = None) -> str:
    """Use `tracking_uri`, else $MLFLOW_TRACKING_URI / an already set URI, else the project's store: never
    MLflow's own default, where the registered models are not."""
    import mlflow

    from ltr.tracking import DEFAULT_TRACKING_URI

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    elif not mlflow.tracking.is_tracking_uri_set():  # also True when $MLFLOW_TRACKING_URI is set
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
    return mlflow.get_tracking_uri()


def _find_cross_encoder(run_id: str | None) -> Path | None:
    if not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    try:
        if not MlflowClient().list_artifacts(run_id, CE_ARTIFACT):
            return None
    except Exception:  # noqa: BLE001 - a run without artifacts (or a missing store) means "no cross-encoder"
        return None
    dst = Path(tempfile.gettempdir()) / "ltr-cross-encoders" / run_id
    if not (dst / CE_ARTIFACT / "config.json").exists():
        dst.mkdir(parents=True, exist_ok=True)
        download_artifacts(run_id=run_id, artifact_path=CE_ARTIFACT, dst_path=str(dst))
    return dst / CE_ARTIFACT


def load_ranker(model_uri: str, cross_encoder: str | Path | None = None,
                tracking_uri: str | None = None) -> LoadedModel:
    """Load `model_uri` (e.g. 'models:/NAME@champion') with its version, run and cross-encoder dir."""
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ServingError("model_uri is empty. Fix: pass a registered model, e.g. models:/ltr-ranker@champion.")
    ensure_tracking_uri(tracking_uri)
    import mlflow
    from mlflow import MlflowClient

    from ltr.tracking import load_model

    ranker = load_model(model_uri)  # raises TrackingError naming the fix
    info = mlflow.models.get_model_info(model_uri)
    lm = LoadedModel(ranker=ranker, uri=model_uri, features=list(ranker.feature_names_), run_id=info.run_id,
                     info={"model_id": getattr(info, "model_id", None)})
    m = _MODELS_URI.match(model_uri.strip())
    if m:
        lm.name, lm.alias, lm.version = m["name"], m["alias"], m["version"]
        if lm.alias:
            mv = MlflowClient().get_model_version_by_alias(lm.name, lm.alias)
            lm.version = str(mv.version)
            lm.run_id = mv.run_id or lm.run_id
    if cross_encoder is not None:
        p = Path(cross_encoder)
        if not (p / "config.json").exists():
            raise ServingError(f"cross_encoder={p} is not a model directory (no config.json). Fix: pass the "
                               "directory written by fine_tune_cross_encoder().")
        lm.cross_encoder = p
    else:
        lm.cross_encoder = _find_cross_encoder(lm.run_id)
    return lm
