"""Hot reload: the service follows its registry alias. Moving `champion` from v1 to v2 under concurrent requests
over real HTTP fails none of them, every response names the version that scored it, and each client sees v1
then v2, never back; a registry that cannot be read leaves the old version serving and /health says why."""
from __future__ import annotations

import os
import shutil
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from ltr import tracking as T
from ltr.serving.app import create_app
from tests.fixtures.serving_world import LiveServer, build_world, request_body, wait_for

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reload")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    with T.using_tracking(f"sqlite:///{root}/mlflow.db", "reload"):
        yield build_world(root, "ltr-reload-test")
    mp.undo()


def _app(world, poll_s):
    return create_app(world["uri"], world["feat"], bi_encoder=world["ce"], embedding_cache=None,
                      tracking_uri=world["tracking"], serving={"reload_poll_s": poll_s, "ce_deadline_ms": 60_000})


def _alias(world, version):
    MlflowClient(tracking_uri=world["tracking"]).set_registered_model_alias(world["name"], T.CHAMPION, version)


def test_alias_move_under_concurrent_requests(world):
    _alias(world, "1")
    app = _app(world, poll_s=0.2)
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[str] = []
    stop = threading.Event()

    def client(i):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            k = 0
            while not stop.is_set():
                r = c.post("/v1/rank", json=request_body(world, i + k))
                k += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen[i].append(r.json()["model_version"])

    with LiveServer(app) as srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: all(len(s) >= 3 for s in seen), timeout=60)
        _alias(world, "2")                                   # the registry moves; the service follows
        assert wait_for(lambda: all(s and s[-1] == "2" for s in seen), timeout=60)
        n_after = [len(s) for s in seen]
        assert wait_for(lambda: all(len(s) >= n + 3 for s, n in zip(seen, n_after)), timeout=60)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        health = httpx.get(f"{srv.url}/health", timeout=30).json()
    assert failures == []
    for s in seen:
        assert set(s) == {"1", "2"}
        assert s == sorted(s)                                # v1 ... v1 v2 ... v2: never back to v1
    assert health["model"]["version"] == "2" and health["reload"]["reloads"] == 1
    assert health["status"] == "ok" and health["reload"]["error"] is None


def test_registry_unreachable_keeps_the_old_version(world):
    _alias(world, "1")
    app = _app(world, poll_s=0)                              # checks driven by the test: deterministic
    watcher = app.state.service.watcher
    away = world["db"].with_suffix(".away")
    with TestClient(app) as c:
        shutil.move(world["db"], away)
        try:
            assert watcher.check() is False                  # nothing swapped
            h = c.get("/health").json()
            assert h["status"] == "degraded" and "registry unreachable" in h["reload"]["error"]
            assert any(r.startswith("reload:") for r in h["reasons"]) and h["model"]["version"] == "1"
            r = c.post("/v1/rank", json=request_body(world, 0))
            assert r.status_code == 200 and r.json()["model_version"] == "1"
        finally:
            shutil.move(away, world["db"])
        _alias(world, "2")
        assert watcher.check() is True                       # registry back: the move is picked up
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["model"]["version"] == "2"
        assert c.post("/v1/rank", json=request_body(world, 0)).json()["model_version"] == "2"


def test_a_version_that_cannot_load_is_refused_and_reported(world, tmp_path):
    """v3 uses ce_score but records no cross-encoder: loading it fails, v-current keeps serving."""
    import mlflow

    from ltr.rankers import XGBLambdaMART
    from ltr.train_config import TrainConfig

    _alias(world, "1")
    app = _app(world, poll_s=0)
    X, j = world["X"], world["j"]
    model = XGBLambdaMART(n_estimators=5, max_depth=2, early_stopping_rounds=None).fit(
        X, j["grade"].to_numpy(float), j["query_id"].to_numpy())
    with T.using_tracking(world["tracking"], "reload"), mlflow.start_run(run_name="broken"):
        info = T.log_ranker(model, X)
        T.log_serving_parts(model, TrainConfig().target, T.ServingParts(cross_encoder=None, bi_encoder=world["ce"]))
        mv = T.register_model(info.model_uri, world["name"])
    assert mv == "3"                                          # register_model moved champion to it
    watcher = app.state.service.watcher
    assert watcher.check() is False
    assert "could not be loaded" in watcher.status()["error"] and watcher.version == "1"
    with TestClient(app) as c:
        assert c.post("/v1/rank", json=request_body(world, 0)).json()["model_version"] == "1"
