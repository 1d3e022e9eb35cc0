"""Resolve a registered ranker: the model, its registry version and feature list, and its cross-encoder.

A ranker that uses `ce_score` is only as good as the cross-encoder that produced that feature in
training, so the model carries it: `ltr.tracking.log_serving_parts` logs the cross-encoder chosen at
training time as the run's `cross_encoder/` artifact with its version and file digest in the run's
manifest. Here it is downloaded into a private cache directory keyed by the run id and checked against
that record before use (a stale, partial or swapped folder is replaced or refused, never trusted because
of its name); an explicit directory must match the record too. A model whose parts cannot be found or do
not match refuses with the fix instead of scoring with NaN.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltr.tracking import CE_ARTIFACT

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")


class ServingError(ValueError):
    """The service (or evaluate) was configured wrongly; the message names the setting and the fix."""


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s'\"]+)+/([^/\s'\"]+)")


def public(text: str) -> str:
    """A message fit for a public response (/health, a degraded reason): directories of file paths removed,
    the file name kept, so a client learns what failed but not where the server keeps its files."""
    return _PATH.sub(r"\1", text)


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
    manifest: dict[str, Any] | None = None
    tracking_uri: str | None = None
    cold_route: Any = None  # ltr.cold_route.ColdRoute: how fully cold queries are scored (None: by the trees)

    def describe(self) -> dict[str, Any]:
        m = self.manifest or {}
        ce = m.get("cross_encoder") or {}
        return {"uri": self.uri, "name": self.name, "version": self.version, "alias": self.alias,
                "run_id": self.run_id, "n_features": len(self.features),
                "cross_encoder": str(self.cross_encoder) if self.cross_encoder else None,
                "cross_encoder_version": ce.get("version"), "cross_encoder_choice": ce.get("choice"),
                "self_contained": self.manifest is not None, "feature_service": m.get("feature_service"),
                "label_transform": m.get("label_transform"), "data_fingerprints": m.get("data_fingerprints"),
                "cold_route": (m.get("cold_route") or {}).get("choice")}


def ensure_tracking_uri(tracking_uri: str | None = None) -> str:
    """Use `tracking_uri`, else $MLFLOW_TRACKING_URI / an already set URI, else the project's store: never
    MLflow's own default, where the registered models are not. A sqlite store whose file does not exist is
    refused: opening it would create an empty store and then report a missing model instead."""
    import mlflow

    from ltr.tracking import DEFAULT_TRACKING_URI

    if tracking_uri:
        uri = tracking_uri
    elif mlflow.tracking.is_tracking_uri_set():  # also True when $MLFLOW_TRACKING_URI is set
        uri = mlflow.get_tracking_uri()
    else:
        uri = DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ServingError(f"tracking store {uri} does not exist. Fix: run `ltr run` first, or point "
                           "--tracking-uri / MLFLOW_TRACKING_URI at the store that holds the model.")
    mlflow.set_tracking_uri(uri)
    return uri


def model_cache_dir() -> Path:
    """Where downloaded model parts live: $LTR_MODEL_CACHE as given, else $XDG_CACHE_HOME (or ~/.cache)
    /ltr-platform/models. Private to the user (0700): a model's parts are code the service runs."""
    env = os.environ.get("LTR_MODEL_CACHE")
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = Path(env) if env else xdg / "ltr-platform" / "models"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _ce_mismatch(d: Path, rec: dict[str, Any]) -> str | None:
    """Why directory `d` is not the cross-encoder `rec` describes (None when it is)."""
    from features.crossencoder import META_FILE
    from ltr.tracking import dir_digest, file_digest

    if not (d / "config.json").exists():
        return f"{d} holds no model (no config.json)"
    if rec.get("version") is not None:
        meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).exists() else {}
        if meta.get("version") != rec["version"]:
            return (f"{d} is cross-encoder version {meta.get('version')!r}, the model was trained with "
                    f"{rec['version']!r}")
    if rec.get("digest") and dir_digest(d) != rec["digest"]:
        return f"{d} has the recorded version but not the recorded files (digest differs)"
    int8 = rec.get("onnx_int8")
    if int8 and (d / int8["file"]).exists() and file_digest(d / int8["file"]) != int8["sha256"]:
        return f"{d}'s int8 export {int8['file']} is not the recorded file (digest differs)"
    return None


def _listing_mismatch(d: Path, run_id: str) -> str | None:
    """For a run without a manifest: the cached files must be the artifact's files, byte counts included."""
    from mlflow import MlflowClient

    want = {Path(a.path).name: a.file_size for a in MlflowClient().list_artifacts(run_id, CE_ARTIFACT)
            if not a.is_dir}
    got = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()} if d.is_dir() else {}
    return None if want and all(got.get(k) == v for k, v in want.items()) else f"{d} differs from the run's artifact"


def _download(run_id: str, check) -> Path:
    """The run's `cross_encoder/` artifact in MODEL_CACHE/RUN_ID/, downloaded into a fresh private temp
    dir and moved into place only once `check` passes; an existing copy is reused only if it passes."""
    from mlflow.artifacts import download_artifacts

    root = model_cache_dir() / run_id
    final = root / CE_ARTIFACT
    if final.is_dir() and check(final) is None:
        return final
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        try:
            download_artifacts(run_id=run_id, artifact_path=CE_ARTIFACT, dst_path=str(tmp))
        except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise ServingError(f"the model's cross-encoder (run {run_id}, artifact '{CE_ARTIFACT}') cannot be "
                               f"downloaded ({type(e).__name__}: {e}). Fix: check that the run's artifacts are "
                               "reachable, or pass --ce-model DIR with the recorded version.") from None
        problem = check(tmp / CE_ARTIFACT)
        if problem:
            raise ServingError(f"the model's cross-encoder does not match its record: {problem}. Fix: "
                               "re-register the model (its artifacts were changed after logging).")
        if final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp / CE_ARTIFACT, final)
        except OSError:  # another process put a copy there first: use it if it is the right one
            if check(final) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _has_ce_artifact(run_id: str | None) -> bool:
    from mlflow import MlflowClient

    try:
        return bool(run_id) and bool(MlflowClient().list_artifacts(run_id, CE_ARTIFACT))
    except Exception:  # noqa: BLE001 - a run without artifacts (or a missing store) means "no cross-encoder"
        return False


def _resolve_cross_encoder(lm: LoadedModel, explicit: str | Path | None) -> Path | None:
    """The cross-encoder that scores new pairs: the one recorded at training time (an explicit dir must be
    that one), else, for a model logged without a manifest, its run's artifact or the explicit dir."""
    rec = (lm.manifest or {}).get("cross_encoder")
    if explicit is not None:
        p = Path(explicit)
        if not (p / "config.json").exists():
            raise ServingError(f"cross_encoder={p} is not a model directory (no config.json). Fix: pass the "
                               "directory written by fine_tune_cross_encoder().")
        problem = _ce_mismatch(p, {"version": rec.get("version")}) if rec else None
        if problem:
            raise ServingError(f"cross_encoder: {problem}. Fix: omit --ce-model / cross_encoder (the model "
                               "carries its own) or pass the directory of the recorded version.")
        return p
    if rec is not None:
        return _download(lm.run_id, lambda d: _ce_mismatch(d, rec))
    if lm.manifest is None and _has_ce_artifact(lm.run_id):
        return _download(lm.run_id, lambda d: _listing_mismatch(d, lm.run_id))
    return None


def _check_manifest(lm: LoadedModel, explicit_ce: bool) -> None:
    """The manifest is readable by this code and agrees with the model; a model that uses ce_score has a
    cross-encoder on record (or the caller gives one explicitly)."""
    m = lm.manifest
    if m is None:
        return
    from ltr.tracking import MANIFEST_FORMAT

    if m.get("format") != MANIFEST_FORMAT:
        raise ServingError(f"model {lm.uri} has manifest format {m.get('format')!r}; this code reads "
                           f"{MANIFEST_FORMAT}. Fix: serve it with the code version that trained it, or retrain.")
    if list(m.get("features") or []) != lm.features:
        raise ServingError(f"model {lm.uri}: the manifest's feature list differs from the model's. Fix: "
                           "re-register the model with ltr.tracking.log_training_run.")
    if "ce_score" in lm.features and not m.get("cross_encoder") and not explicit_ce:
        raise ServingError(f"model {lm.uri} uses ce_score but its run records no cross-encoder. Fix: "
                           "re-register it with ServingParts(cross_encoder=DIR), or pass --ce-model DIR.")


def check_bi_encoder(lm: LoadedModel, bi_encoder: Any) -> None:
    """Refuse a bi-encoder other than the one the model's `bienc_cos` was computed with (by config hash;
    for "default", the feature length too). Nothing to check without a manifest or without bienc_cos."""
    rec = (lm.manifest or {}).get("bi_encoder")
    if rec is None or bi_encoder is None or "bienc_cos" not in lm.features:
        return
    from ltr.tracking import encoder_identity

    if str(bi_encoder) == "default":
        from features.biencoder import FEATURE_MAX_LENGTH
        from ltr.data.encoder import default_encoder_path
        got = encoder_identity(default_encoder_path(), FEATURE_MAX_LENGTH)
    else:
        got = encoder_identity(getattr(bi_encoder, "path", bi_encoder), getattr(bi_encoder, "max_length", None))
    same = got["config_sha256"] == rec.get("config_sha256") and (
        str(bi_encoder) != "default" or got["max_length"] == rec.get("max_length"))
    if not same:
        raise ServingError(f"bi-encoder {got['path']} (config {str(got['config_sha256'])[:12]}) is not the one "
                           f"the model's bienc_cos came from: {rec.get('name')} at {rec.get('path')} (config "
                           f"{str(rec.get('config_sha256'))[:12]}). Fix: set LTR_ENCODER_PATH (or bi_encoder) "
                           "to that encoder.")


def _load_cold_route(lm: LoadedModel) -> Any:
    """The cold route the manifest records, with its content model from the same store (None: none recorded)."""
    rec = (lm.manifest or {}).get("cold_route")
    if not rec:
        return None
    from ltr.cold_route import ColdRoute
    from ltr.tracking import TrackingError, load_model

    if list(rec.get("features") or []) != lm.features:
        raise ServingError(f"model {lm.uri}: its cold route was fitted for another feature list. Fix: re-register "
                           "the model (ltr run does it).")
    try:
        content = load_model(rec["content_model_uri"]) if rec.get("content_model_uri") else None
    except TrackingError as e:
        raise ServingError(f"model {lm.uri}: its cold route's content model cannot be loaded ({e}). Fix: check "
                           "that the run's models are in the tracking store, or re-register the model.") from None
    return ColdRoute.from_record(rec, content)


def load_ranker(model_uri: str, cross_encoder: str | Path | None = None,
                tracking_uri: str | None = None) -> LoadedModel:
    """Load `model_uri` (e.g. 'models:/NAME@champion') with its version, run, manifest and cross-encoder dir."""
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ServingError("model_uri is empty. Fix: pass a registered model, e.g. models:/ltr-ranker@champion.")
    resolved_uri = ensure_tracking_uri(tracking_uri)
    import mlflow
    from mlflow import MlflowClient

    from ltr.tracking import load_model, read_manifest

    ranker = load_model(model_uri)  # raises TrackingError naming the fix
    info = mlflow.models.get_model_info(model_uri)
    lm = LoadedModel(ranker=ranker, uri=model_uri, features=list(ranker.feature_names_), run_id=info.run_id,
                     info={"model_id": getattr(info, "model_id", None)}, tracking_uri=resolved_uri)
    m = _MODELS_URI.match(model_uri.strip())
    if m:
        lm.name, lm.alias, lm.version = m["name"], m["alias"], m["version"]
        if lm.alias:
            mv = MlflowClient().get_model_version_by_alias(lm.name, lm.alias)
            lm.version = str(mv.version)
            lm.run_id = mv.run_id or lm.run_id
    lm.manifest = read_manifest(lm.run_id)
    _check_manifest(lm, explicit_ce=cross_encoder is not None)
    lm.cross_encoder = _resolve_cross_encoder(lm, cross_encoder)
    lm.cold_route = _load_cold_route(lm)
    return lm


def serving_ce_backend(wanted: str, ce_dir: Path | None) -> str:
    """The cross-encoder backend a service runs: `wanted`, or for "auto" ONNX int8 when the cross-encoder
    dir holds the int8 export of its weights (built offline at registration), else torch fp32. Never an
    export at start unasked: that costs ~26 s on 2 cores."""
    if wanted != "auto":
        return wanted
    from features.crossencoder.onnx_export import int8_export

    return "onnx-int8" if ce_dir is not None and int8_export(ce_dir) is not None else "torch"
