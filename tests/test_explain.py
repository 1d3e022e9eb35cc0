"""`/v1/rank` with `"explain": true` (ltr/serving/explain.py): for every result, the features as served and
each one's contribution (TreeSHAP), which with the bias add up to the served score, in the phase that scored
it; over real HTTP with the serving world (Feast store, a tiny BERT cross-encoder, registered XGBoost)."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ltr import tracking as T
from ltr.serving.app import create_app
from ltr.serving.explain import feature_group
from tests.fixtures.serving_world import build_world, request_body


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))
    w = build_world(root, "ltr-explain-test")
    with T.using_tracking(w["tracking"], "explain-test", (root / "artifacts").as_uri()):
        # the cross-encoder on the top 4 only: some results are second-phase rows, some first-phase
        app = create_app(w["uri"], w["feat"], products=None, bi_encoder=w["ce"],
                         serving={"rerank_k": 4, "ce_deadline_ms": 120_000})
        with TestClient(app) as c:
            yield {**w, "client": c, "app": app}
    mp.undo()


@pytest.mark.parametrize("k", range(6))
def test_contributions_and_bias_add_up_to_the_served_score(world, k):
    body = world["client"].post("/v1/rank", json={**request_body(world, k), "explain": True}).json()
    feats = world["app"].state.service.live.model.features
    phases = set()
    for r in body["results"]:
        e = r["explain"]
        assert e["scorer"] == "trees" and list(e["contributions"]) == feats
        assert abs(e["bias"] + sum(e["contributions"].values()) - r["score"]) < 1e-5, r
        assert abs(e["margin"] - r["score"]) < 1e-5
        assert abs(sum(e["groups"].values()) - sum(e["contributions"].values())) < 1e-9
        # the phase that scored it: the cross-encoder's score is a feature of second-phase rows only
        assert (e["features"]["ce_score"] is not None) == (r["phase"] == 2) == e["cross_encoder"]
        assert 0 <= e["content_share"] <= 1 and 0 <= e["engagement_share"] <= 1
        phases.add(r["phase"])
    assert phases == {1, 2}


def test_the_features_are_the_ones_served(world):
    """The explained values are the matrix the service scored: re-scoring them gives the served scores."""
    live = world["app"].state.service.live
    body = world["client"].post("/v1/rank", json={**request_body(world, 1), "explain": True}).json()
    X = np.array([[np.nan if v is None else v for v in r["explain"]["features"].values()] for r in body["results"]])
    assert np.allclose(live.model.ranker.predict_matrix(X), [r["score"] for r in body["results"]], atol=1e-5)


def test_without_explain_the_response_is_unchanged(world):
    body = world["client"].post("/v1/rank", json=request_body(world, 2)).json()
    assert all(r.get("explain") is None for r in body["results"])


def test_a_bad_explain_value_names_the_field(world):
    res = world["client"].post("/v1/rank", json={**request_body(world, 0), "explain": "maybe"})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"][-1] == "explain"


def test_feature_groups():
    assert [feature_group(f) for f in ("eng_qp_ctr_7d", "prod_log_price", "ce_score", "lex_bm25_title")] == \
           ["engagement", "product", "content", "content"]


def test_ltr_explain_prints_the_table(world, tmp_path):
    from typer.testing import CliRunner

    from ltr.cli import app as cli

    run = tmp_path / "run"                                      # a run dir's layout: its Feast store and dataset
    run.mkdir()
    (run / "features").symlink_to(world["feat"])
    (run / "dataset").symlink_to(world["ds"].root)
    q = request_body(world, 0)["query"]
    base = ["explain", "--run-dir", str(run), "--model", world["uri"], "--tracking-uri", world["tracking"]]
    res = CliRunner().invoke(cli, base + ["--query", q, "--top", "3"])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 3 and "largest contributions" in res.output
    res = CliRunner().invoke(cli, base + ["--query", "no such query anywhere"])
    assert res.exit_code == 2 and "--product-ids" in res.output
