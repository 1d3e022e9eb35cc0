"""Team-draft interleaving (ltr/interleaving.py) in the ranking service, end to end on a small built-in world:
real MLflow registry, real HTTP, the world's shoppers (ltr.sim.replay) clicking what the service showed.

A challenger that is truly better (per the world's truth: its expected clicks per search are higher) must
win the interleaving; the champion against itself must tie (the CI holds 0)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ltr.interleaving import (
    InterleavingError,
    in_share,
    interleaving_report,
    served_log_credits,
    team_draft,
    ubi_credits,
)

SMALL = dict(n_products=800, n_queries=60, n_candidates=30, days=7, sessions=1500)
SESSIONS = 500


# --- the draft -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_team_draft_keeps_each_rankers_order_and_balances_the_teams(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.permutation(15), rng.permutation(15)
    order, team = team_draft(a, b, seed)
    assert sorted(order.tolist()) == list(range(15))
    for t, ranking in ((0, a), (1, b)):
        picks = order[team == t].tolist()
        pos = {d: i for i, d in enumerate(ranking.tolist())}
        assert [pos[d] for d in picks] == sorted(pos[d] for d in picks), "a team picks in its ranker's order"
        # each pick is that ranker's best product not yet in the list
        for n in np.flatnonzero(team == t):
            left = [d for d in ranking.tolist() if d not in set(order[:n].tolist())]
            assert order[n] == left[0]
    gap = np.abs(np.cumsum(team == 0) - np.cumsum(team == 1))
    assert gap.max() <= 1, "the teams take turns"
    assert (order == team_draft(a, b, seed)[0]).all(), "the same seed drafts the same list"


def test_identical_rankings_interleave_to_the_same_list_with_both_teams_credited():
    a = np.arange(12)[::-1]
    order, team = team_draft(a, a.copy(), 3)
    assert (order == a).all()
    assert abs(int((team == 0).sum()) - int((team == 1).sum())) <= 1


def test_different_candidates_are_refused():
    with pytest.raises(InterleavingError, match="different candidates"):
        team_draft([0, 1, 2], [0, 1, 3], 0)


def test_the_share_is_decided_by_request_id():
    ids = [f"r{i}" for i in range(4000)]
    assert not any(in_share(r, 0.0) for r in ids) and all(in_share(r, 1.0) for r in ids)
    share = np.mean([in_share(r, 0.3) for r in ids])
    assert 0.27 < share < 0.33
    assert [in_share(r, 0.3) for r in ids[:50]] == [in_share(r, 0.3) for r in ids[:50]]


def test_report_counts_wins_losses_and_ties():
    credits = pd.DataFrame({"request_id": ["a", "a", "b", "b", "c", "c", "d"],
                            "arm": ["champion", "challenger"] * 3 + ["champion"],
                            "clicked": [False, True, True, False, True, True, False]})
    rep = interleaving_report(credits, n_boot=200)
    assert (rep["challenger_wins"], rep["champion_wins"], rep["ties"], rep["searches"]) == (1, 1, 2, 4)
    assert rep["preference"] == 0.0 and rep["ci95"][0] <= 0 <= rep["ci95"][1]
    assert rep["clicks"] == {"champion": 2, "challenger": 2}


@pytest.mark.parametrize("change, needle", [
    (lambda c: c.drop(columns="arm"), "missing column 'arm'"),
    (lambda c: c.assign(arm="treatment"), "unknown value"),
    (lambda c: c.iloc[:0], "no interleaved search"),
])
def test_bad_credits_name_the_field_and_the_fix(change, needle):
    credits = pd.DataFrame({"request_id": ["a", "a"], "arm": ["champion", "challenger"], "clicked": [True, False]})
    with pytest.raises(InterleavingError, match=needle):
        interleaving_report(change(credits))


# --- the service, with the world's shoppers ------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A small world and two registered versions learnt from its true grades: v1 from product features alone
    (popularity, price, rating: a content-blind ranker), v2 with the lexical match too (better: 2.40 against
    2.01 expected clicks per search on the world's truth, measured)."""
    from features.lexical import LEXICAL_FEATURES
    from features.ondemand import OnDemandFeatures
    from features.product import PRODUCT_FEATURES
    from ltr import tracking as T
    from ltr.data.dataset import Dataset
    from ltr.serving.demo import train_and_register
    from ltr.sim.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("interleave")
    world = root / "world"
    generate_world(world, seed=5, cfg=WorldConfig(**SMALL), progress=False)
    ds = Dataset.load(world)
    truth = ds.load_truth().merge(ds.queries[["query_id", "query"]], on="query_id")
    cols = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES)
    X = OnDemandFeatures(ds.products).compute(truth[["query", "product_id"]], cols)[cols]
    tracking = f"sqlite:///{root}/mlflow.db"
    name = "ltr-interleave-test"
    with T.using_tracking(tracking, "interleave-test", (root / "artifacts").as_uri()):
        train_and_register(X[list(PRODUCT_FEATURES)], truth["grade"], truth["query_id"], name, n_estimators=30)
        train_and_register(X, truth["grade"], truth["query_id"], name, n_estimators=30)
        from mlflow import MlflowClient
        client = MlflowClient()
        client.set_registered_model_alias(name, T.CHAMPION, "1")
        client.set_registered_model_alias(name, "challenger", "2")
    return {"root": root, "world": world, "tracking": tracking, "name": name, "ds": ds, "X": X, "truth": truth}


def _serve_and_replay(reg, challenger: str, log_dir, seed: int = 0):
    from ltr.serving.app import create_app
    from ltr.sim.replay import replay_shoppers
    from ltr.sim.sessions import EPOCH
    from tests.fixtures.serving_world import LiveServer

    app = create_app(f"models:/{reg['name']}@champion", products=reg["world"], bi_encoder=None,
                     tracking_uri=reg["tracking"], log_dir=log_dir, precompute_embeddings=False,
                     serving={"interleave_share": 1.0, "reload_poll_s": 0}, challenger=challenger)
    with LiveServer(app) as srv:
        log = replay_shoppers(srv.url, reg["world"], SESSIONS, EPOCH, seed=seed, request_ids=f"s{seed}-")
    assert not log.failures, log.failures[:3]
    return log


def test_a_truly_better_challenger_wins_and_the_logs_say_which_arm_placed_each_result(registry, tmp_path):
    from ltr import tracking as T
    from ltr.counterfactual.validation import ScoredRanker, expected
    from ltr.serving.served_log import read_served_log

    reg = registry
    with_truth = []
    for v in ("1", "2"):  # the world's truth: expected clicks per search of each version alone
        with T.using_tracking(reg["tracking"], "interleave-test"):
            model = T.load_model(f"models:/{reg['name']}/{v}")
        scores = reg["truth"][["query_id", "product_id"]].assign(score=model.predict(reg["X"][model.feature_names_]))
        e = expected(reg["world"], ScoredRanker(scores))
        with_truth.append(float(e["clicked"].mean()))  # per search, queries weighted equally
    assert with_truth[1] > with_truth[0] * 1.1, with_truth

    log = _serve_and_replay(reg, f"models:/{reg['name']}@challenger", tmp_path / "served")
    assert {r["model_version"] for r in log.responses} == {"1"}
    ubi = log.write(tmp_path / "ubi.ndjson")
    rep = interleaving_report(ubi_credits([ubi]))
    assert rep["searches"] == SESSIONS
    assert rep["verdict"] == "challenger preferred" and rep["ci95"][0] > 0 and rep["sign_test_p"] < 0.01, rep

    served = read_served_log(tmp_path / "served")
    assert served["arm"].notna().all() and set(served["arm"]) == {"champion", "challenger"}
    from_log = interleaving_report(served_log_credits(tmp_path / "served", [ubi]))
    assert {k: from_log[k] for k in ("challenger_wins", "champion_wins", "ties")} == \
           {k: rep[k] for k in ("challenger_wins", "champion_wins", "ties")}

    from ltr.cli import app as cli
    res = CliRunner().invoke(cli, ["interleaving", "--logs", str(ubi), "--out", str(tmp_path / "il.json")])
    assert res.exit_code == 0, res.output
    assert "challenger preferred" in res.output
    assert json.loads((tmp_path / "il.json").read_text())["challenger_wins"] == rep["challenger_wins"]


def test_the_champion_against_itself_ties(registry, tmp_path):
    reg = registry
    log = _serve_and_replay(reg, f"models:/{reg['name']}@champion", None, seed=1)
    rep = interleaving_report(ubi_credits([log.write(tmp_path / "ubi.ndjson")]))
    assert rep["searches"] == SESSIONS
    assert rep["ci95"][0] <= 0 <= rep["ci95"][1] and rep["verdict"] == "no difference shown", rep


def test_response_names_the_arms_and_a_share_of_zero_interleaves_nothing(registry):
    from fastapi.testclient import TestClient

    from features.lexical import LEXICAL_FEATURES
    from features.product import PRODUCT_FEATURES
    from ltr.serving.app import create_app

    reg = registry
    ds = reg["ds"]
    q = ds.queries.iloc[0]
    ids = list(ds.candidates.loc[ds.candidates["query_id"] == q["query_id"], "product_id"])
    for share, mixed in ((1.0, True), (0.0, False)):
        app = create_app(f"models:/{reg['name']}@champion", products=reg["world"], bi_encoder=None,
                         tracking_uri=reg["tracking"], precompute_embeddings=False,
                         serving={"interleave_share": share, "reload_poll_s": 0},
                         challenger=f"models:/{reg['name']}@challenger")
        with TestClient(app) as c:
            body = c.post("/v1/rank", json={"query": q["query"], "product_ids": ids, "explain": True}).json()
            health = c.get("/health").json()
        for r in body["results"]:  # each result explained by the model whose score it shows
            e = r["explain"]
            assert abs(e["margin"] - r["score"]) < 1e-5
            lexical = len(LEXICAL_FEATURES) if r["arm"] == "challenger" else 0
            assert len(e["contributions"]) == len(PRODUCT_FEATURES) + lexical
        assert body["interleaved"] is mixed
        arms = [r["arm"] for r in body["results"]]
        assert (set(arms) == {"champion", "challenger"}) if mixed else (set(arms) == {None})
        assert body["challenger_version"] == ("2" if mixed else None)
        assert health["challenger"]["model"]["version"] == "2"
        assert health["challenger"]["interleave_share"] == share


def test_cli_refuses_a_share_without_a_challenger():
    from ltr.cli import app as cli
    res = CliRunner().invoke(cli, ["serve", "--products", "x", "--interleave-share", "0.5"])
    assert res.exit_code == 2 and "needs --challenger" in res.output


def _credits(challenger_clicks: int, champion_clicks: int, searches: int = 400) -> pd.DataFrame:
    """Interleaved searches with the given clicks per team, spread one per search."""
    rows = []
    for n in range(searches):
        rows += [(f"q{n}", "challenger", n < challenger_clicks), (f"q{n}", "champion", n < champion_clicks)]
    return pd.DataFrame(rows, columns=["request_id", "arm", "clicked"])


def test_promote_reads_the_interleaving_and_the_runs_content_check(registry, tmp_path):
    from mlflow import MlflowClient

    from ltr import tracking as T
    from ltr.cli import app as cli

    reg = registry
    good = tmp_path / "good.json"
    good.write_text(json.dumps(interleaving_report(_credits(300, 200))))
    unsure = tmp_path / "unsure.json"
    unsure.write_text(json.dumps(interleaving_report(_credits(196, 200))))   # -2%, CI well below -1%
    base = ["promote", "--name", reg["name"], "--version", "2", "--tracking-uri", reg["tracking"]]
    with T.using_tracking(reg["tracking"], "interleave-test"):
        client = MlflowClient()
        try:
            res = CliRunner().invoke(cli, base + ["--interleaving", str(good)])
            assert res.exit_code == 1 and "content check did not pass" in res.output, res.output
            client.set_model_version_tag(reg["name"], "2", "ltr.promotion.content_ok", "True")  # as its run's gate
            res = CliRunner().invoke(cli, base + ["--interleaving", str(unsure)])
            assert res.exit_code == 1 and "below -1% at 95%" in res.output, res.output
            assert str(client.get_model_version_by_alias(reg["name"], "champion").version) == "1"
            res = CliRunner().invoke(cli, base + ["--interleaving", str(good)])
            assert res.exit_code == 0 and "-> @champion" in res.output, res.output
            assert str(client.get_model_version_by_alias(reg["name"], "champion").version) == "2"
            tags = client.get_model_version(reg["name"], "2").tags
            assert tags["ltr.promotion.alias"] == "champion" and "interleaving over 400" in tags["ltr.promotion.reason"]
            res = CliRunner().invoke(cli, base)
            assert res.exit_code == 2 and "needs evidence" in res.output
            res = CliRunner().invoke(cli, ["promote", "--name", reg["name"], "--version", "9", "--force",
                                           "--tracking-uri", reg["tracking"]])
            assert res.exit_code == 2 and "no version 9" in res.output, res.output
        finally:  # the module's other tests expect v1 as champion, v2 as challenger
            client.set_registered_model_alias(reg["name"], "champion", "1")
            client.set_registered_model_alias(reg["name"], "challenger", "2")
