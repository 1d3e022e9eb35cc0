"""ltr.tracking against a real MLflow sqlite store in a temp dir: log, register, alias, load."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from fixtures.synthetic_frame import synthetic_training_frame
from mlflow import MlflowClient

from ltr import tracking as T
from ltr.train import train_and_evaluate
from ltr.train_config import TrainConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    with T.using_tracking(f"sqlite:///{d}/mlflow.db", "ltr-test", (d / "artifacts").as_uri()) as exp_id:
        yield d, exp_id


@pytest.fixture(scope="module")
def result():
    f = synthetic_training_frame(24, 10, seed=5)
    return train_and_evaluate(f, TrainConfig.model_validate({"model": {"n_estimators": 15, "n_jobs": 1}}))


def test_fingerprint_is_stable_and_sensitive(result):
    f = result.train_frame
    assert T.frame_fingerprint(f) == T.frame_fingerprint(f.copy())
    g = f.copy()
    g.loc[0, "ce_score"] += 1e-9
    assert T.frame_fingerprint(g) != T.frame_fingerprint(f)


def test_log_register_alias_and_load(store, result):
    d, exp_id = store
    run_id, uri = T.log_training_run(result, run_name="unit", label_source="llm:test@v1")
    run = MlflowClient().get_run(run_id)
    assert run.info.experiment_id == exp_id
    assert run.data.tags["label_source"] == "llm:test@v1"
    assert run.data.tags["train_fingerprint"] == T.frame_fingerprint(result.train_frame)
    assert run.data.params["target.alpha"] == "10.0" and run.data.params["model.kind"] == "xgboost"
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(result.metrics["ndcg@10"])
    arts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"config.json", "feature_importance.json", "feature_importance.png", "features.json",
            "per_query_metrics.csv"} <= arts
    assert str(d) in run.info.artifact_uri                         # artifacts in the configured location

    v1 = T.register_model(uri, "ltr-unit")
    m = T.load_model("models:/ltr-unit@champion")
    assert m.feature_names_ == result.features
    assert np.allclose(m.predict(result.test_frame), result.model.predict(result.test_frame))
    info = mlflow.models.get_model_info("models:/ltr-unit@champion")
    assert [c.name for c in info.signature.inputs] == result.features

    # promote a second model: the alias moves
    _, uri2 = T.log_training_run(result, run_name="unit2")
    v2 = T.register_model(uri2, "ltr-unit")
    assert int(v2) == int(v1) + 1
    assert str(MlflowClient().get_model_version_by_alias("ltr-unit", "champion").version) == v2


def test_load_model_errors(store):
    with pytest.raises(T.TrackingError, match="models:/NAME@champion"):
        T.load_model("models:/does-not-exist@champion")


def test_config_json_artifact_roundtrips(store, result, tmp_path):
    run_id, _ = T.log_training_run(result, run_name="cfg", log_model=False)
    p = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.json", dst_path=str(tmp_path))
    assert TrainConfig.model_validate(json.loads(Path(p).read_text())) == result.config


def test_lightgbm_baseline_roundtrip(store, result):
    from ltr.rankers import LGBMLambdaMART
    from ltr.targets import make_labels

    tr = result.train_frame
    y, _ = make_labels(tr)
    m = LGBMLambdaMART(n_estimators=5, n_jobs=1).fit(tr[result.features], y, tr["query_id"])
    with mlflow.start_run(run_name="lgbm"):
        info = T.log_ranker(m, tr)
    back = T.load_model(info.model_uri)
    assert isinstance(back, LGBMLambdaMART) and back.feature_names_ == result.features
    assert np.allclose(back.predict(result.test_frame), m.predict(result.test_frame))


def test_using_tracking_puts_back_the_callers_store_and_experiment(store, tmp_path):
    _, exp_id = store
    outer = mlflow.get_tracking_uri()
    inner = f"sqlite:///{tmp_path}/inner.db"
    with T.using_tracking(inner, "inner", (tmp_path / "artifacts").as_uri()) as inner_id:
        assert mlflow.get_tracking_uri() == inner and os.environ["MLFLOW_EXPERIMENT_ID"] == inner_id
        mlflow.start_run(run_name="left-open")                  # the block ends it
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == outer == os.environ["MLFLOW_TRACKING_URI"]
    assert os.environ["MLFLOW_EXPERIMENT_ID"] == exp_id
    with mlflow.start_run(run_name="after-inner") as run:        # lands in the caller's experiment again
        pass
    assert run.info.experiment_id == exp_id


def test_using_tracking_leaves_an_unset_uri_unset(tmp_path):
    code = ("import os, mlflow; from ltr import tracking as T\n"
            f"with T.using_tracking('sqlite:///{tmp_path}/t.db', 'x', {(tmp_path / 'a').as_uri()!r}):\n"
            "    assert mlflow.tracking.is_tracking_uri_set()\n"
            "assert not mlflow.tracking.is_tracking_uri_set()\n"
            "assert 'MLFLOW_TRACKING_URI' not in os.environ and 'MLFLOW_EXPERIMENT_ID' not in os.environ\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# --- the registered model carries its serving parts ----------------------------------------------------

def _cross_encoder(path: Path, version: str) -> Path:
    from features.crossencoder import META_FILE
    from ltr.serving.demo import save_encoder

    save_encoder(path)
    (path / META_FILE).write_text(json.dumps({"version": version}))
    return path


def test_serving_parts_travel_with_the_run(store, result, tmp_path):
    import hashlib

    ce = _cross_encoder(tmp_path / "ce", "ce-v7")
    parts = T.ServingParts(cross_encoder=ce, cross_encoder_choice="fold 0", bi_encoder=ce,
                           data_fingerprints={"labels": "abc"})
    run_id, _ = T.log_training_run(result, run_name="self-contained", serving=parts)
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "cross_encoder")}
    assert logged == {f"cross_encoder/{p.name}" for p in ce.iterdir() if p.is_file()} and len(logged) >= 3
    m = T.read_manifest(run_id)
    t = result.config.target
    assert m["label_transform"] == {"alpha": t.alpha, "beta": t.beta, "rescale": t.rescale, "blend": t.blend,
                                    "blend_weight": t.blend_weight, "gate": t.gate, "label_mode": t.label_mode,
                                    "content_source": t.content_source}
    assert m["features"] == result.features and m["feature_service"] == "serving" and m["ranker"] == "xgboost"
    assert m["data_fingerprints"] == {"train_frame": T.frame_fingerprint(result.train_frame),
                                      "test_frame": T.frame_fingerprint(result.test_frame), "labels": "abc"}
    assert (m["cross_encoder"]["version"], m["cross_encoder"]["digest"], m["cross_encoder"]["choice"]) == (
        "ce-v7", T.dir_digest(ce), "fold 0")
    assert m["bi_encoder"]["config_sha256"] == hashlib.sha256((ce / "config.json").read_bytes()).hexdigest()
    assert MlflowClient().get_run(run_id).data.tags["ce_version"] == "ce-v7"
    plain, _ = T.log_training_run(result, run_name="plain", log_model=False)
    assert T.read_manifest(plain) is None
    with pytest.raises(T.TrackingError, match="no config.json"):
        T.log_training_run(result, run_name="bad", log_model=False, serving=T.ServingParts(cross_encoder=tmp_path))


def test_dir_digest_sees_names_and_bytes_not_subfolders(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    d0 = T.dir_digest(tmp_path)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"cache")      # an export cache beside the model
    assert T.dir_digest(tmp_path) == d0
    (tmp_path / "a").write_bytes(b"2")
    assert T.dir_digest(tmp_path) != d0


def test_stage_train_register_records_fold0_as_the_serving_cross_encoder(store, tmp_path, monkeypatch):
    from ltr.pipeline import RunPaths, stage_train_register
    from ltr.rankers import split_frame
    from ltr.run_config import RunConfig
    from ltr.serving.demo import demo_dataset
    from ltr.serving.model import load_ranker
    from ltr.train_config import TuneConfig
    from ltr.tuning import tune

    monkeypatch.setenv("LTR_MODEL_CACHE", str(tmp_path / "cache"))
    frame = synthetic_training_frame(24, 10, seed=3)
    frame["eng_qp_ctr_28d"] = frame["ctr_smoothed"]               # an engagement feature: the model gets a cold route
    train, test = split_frame(frame, "query_id", [0.7, 0.3], 0)
    tcfg = TrainConfig.model_validate({"model": {"n_estimators": 10, "early_stopping_rounds": 5, "n_jobs": 1}})
    tres = tune(train, tcfg, TuneConfig(n_trials=2, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s"),
                track=False)
    paths = RunPaths(tmp_path / "run")
    _cross_encoder(paths.ce / "llm_fold0", "ce-fold0")
    _cross_encoder(paths.ce / "llm_fold1", "ce-fold1")
    ds = demo_dataset(tmp_path / "run" / "dataset", n_queries=3, impressions=False)
    paths.labels.parent.mkdir(parents=True)
    frame[["query_id", "product_id", "content_score"]].to_parquet(paths.labels)
    cfg = RunConfig.model_validate({"tracking": {"model_name": "ltr-stage-test"}})
    out = stage_train_register(cfg, tres, train, test, {"dataset": str(ds)}, paths=paths)
    lm = load_ranker(out["model_uri"])                            # only the URI: no run dir, no --ce-model
    ce = lm.manifest["cross_encoder"]
    assert ce["version"] == "ce-fold0" and ce["choice"].startswith("fold 0 of 2")
    from features.crossencoder.onnx_export import int8_export
    assert ce["onnx_int8"]["file"] == f"onnx/{int8_export(lm.cross_encoder).name}"   # built at registration, downloaded
    assert T.dir_digest(lm.cross_encoder) == T.dir_digest(paths.ce / "llm_fold0")
    assert lm.manifest["label_transform"]["alpha"] == tres.best_config.target.alpha
    assert lm.manifest["label_transform"]["blend_weight"] == tres.best_config.target.blend_weight
    prints = lm.manifest["data_fingerprints"]
    assert set(prints) == {"train_frame", "test_frame", "labels", "dataset/products.parquet",
                           "dataset/judgments.parquet"}
    assert prints["labels"] == T.file_digest(paths.labels)
    route = lm.manifest["cold_route"]   # chosen on the training queries alone, and carried by the model
    assert route["validation"]["n_queries"] == train["query_id"].nunique() and route["features"] == lm.features
    assert (lm.cold_route.scorer_.name == route["choice"]) and "ndcg@10/cold_routed" in out["test_metrics"]
