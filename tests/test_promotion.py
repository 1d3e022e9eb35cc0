"""The promotion gate (ltr/promotion.py): the rule on given figures, and the gate on a small built-in world
with a real MLflow registry: a worse new version is refused (it becomes @challenger, the champion stays), a
better one is promoted, and each decision says why in one line."""
from __future__ import annotations

import pandas as pd
import pytest

from ltr.promotion import PromotionConfig, decide, gate

CFG = PromotionConfig()


def _eng(rel, lo, hi):
    return {"outcome": "added_to_cart", "estimator": "dr", "rel_diff": rel, "rel_diff_ci95": [lo, hi]}


@pytest.mark.parametrize("content, engagement, promote, needle", [
    ((0.80, 0.78), _eng(0.02, -0.004, 0.05), True, "-0.40%"),
    ((0.80, 0.78), _eng(0.01, -0.03, 0.05), False, "below -1% at 95%"),     # too uncertain: the champion stays
    ((0.76, 0.78), _eng(0.05, 0.02, 0.08), False, "0.7600 < champion 0.7800"),
    ((0.80, 0.78), None, True, "judged on content alone"),
    ((0.77, 0.78), None, False, "judged on content alone"),
])
def test_the_rule(content, engagement, promote, needle):
    d = decide(content, engagement, CFG)
    assert d.promote is promote and d.alias == ("champion" if promote else "challenger")
    assert needle in d.reason and "\n" not in d.reason


def test_a_tolerance_lets_a_tie_through():
    assert not decide((0.779, 0.78), None, CFG).promote
    assert decide((0.779, 0.78), None, PromotionConfig(content_tolerance=0.002)).promote


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="max_engagement_drop"):
        PromotionConfig(max_engagement_drop=-0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small world, its candidates' request-time features and true grades, split by query."""
    from features.lexical import LEXICAL_FEATURES
    from features.ondemand import OnDemandFeatures
    from features.product import PRODUCT_FEATURES
    from ltr.data.dataset import Dataset
    from ltr.rankers import split_frame
    from ltr.sim.world import WorldConfig, generate_world

    d = tmp_path_factory.mktemp("promo") / "world"
    generate_world(d, seed=3, cfg=WorldConfig(n_products=800, n_queries=80, n_candidates=30, days=14,
                                              sessions=12000), progress=False)
    ds = Dataset.load(d)
    truth = ds.load_truth().merge(ds.queries[["query_id", "query"]], on="query_id")
    cols = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES)
    X = OnDemandFeatures(ds.products).compute(truth[["query", "product_id"]], cols)[cols]
    frame = pd.concat([truth[["query_id", "product_id", "grade"]].reset_index(drop=True), X], axis=1)
    train, test = split_frame(frame, "query_id", [0.5, 0.5], 0)
    cutoff = ds.impressions["ts"].max() - pd.Timedelta(days=7)
    return {"ds": ds, "train": train, "test": test, "cutoff": cutoff, "lex": list(LEXICAL_FEATURES),
            "prod": list(PRODUCT_FEATURES)}


def _register(world, feats, name):
    """A version fitted on the training queries' true grades with `feats`, registered without an alias."""
    from ltr import tracking as T
    from ltr.rankers import XGBLambdaMART

    tr = world["train"]
    model = XGBLambdaMART(n_estimators=30, max_depth=3, early_stopping_rounds=None, random_state=0,
                          n_jobs=2).fit(tr[feats], tr["grade"].astype(float).to_numpy(), tr["query_id"].to_numpy())
    import mlflow
    with mlflow.start_run():
        info = T.log_ranker(model, tr[feats])
    return model, T.register_model(info.model_uri, name, alias=None)


def test_the_gate_refuses_a_worse_version_and_promotes_a_better_one(world, tmp_path):
    from mlflow import MlflowClient

    from ltr import tracking as T
    from ltr.train_config import TrainConfig

    name, tcfg = "ltr-promo-test", TrainConfig()
    with T.using_tracking(f"sqlite:///{tmp_path}/mlflow.db", "promo", (tmp_path / "art").as_uri()):
        good, v1 = _register(world, world["lex"] + world["prod"], name)
        first = gate(name, v1, good, world["test"], world["ds"], world["cutoff"], CFG, tcfg)
        assert first.promote and "first version" in first.reason

        worse, v2 = _register(world, world["prod"], name)        # content-blind: popularity, price, rating
        d = gate(name, v2, worse, world["test"], world["ds"], world["cutoff"], CFG, tcfg)
        client = MlflowClient()
        assert not d.promote and d.alias == "challenger", d.reason
        assert str(client.get_model_version_by_alias(name, "champion").version) == v1
        assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
        c, e = d.evidence["content"], d.evidence["engagement"]
        assert c["new"] < c["champion"] and e["rel_diff_ci95"][1] < 0, d.reason   # worse on both counts
        assert e["searches"] > 500 and d.evidence["champion_version"] == v1

        # the content-blind version as champion, the full one new: promoted on both counts
        client.set_registered_model_alias(name, "champion", v2)
        better, v3 = _register(world, world["lex"] + world["prod"], name)
        d3 = gate(name, v3, better, world["test"], world["ds"], world["cutoff"], CFG, tcfg)
        assert d3.promote, d3.reason
        assert d3.evidence["engagement"]["rel_diff_ci95"][0] > 0
        assert str(client.get_model_version_by_alias(name, "champion").version) == v3


def test_without_a_log_content_decides(world, tmp_path):
    from ltr import tracking as T
    from ltr.train_config import TrainConfig

    name = "ltr-promo-nolog"
    with T.using_tracking(f"sqlite:///{tmp_path}/mlflow.db", "promo", (tmp_path / "art").as_uri()):
        good, v1 = _register(world, world["lex"] + world["prod"], name)
        gate(name, v1, good, world["test"], None, None, CFG, TrainConfig())
        worse, v2 = _register(world, world["prod"], name)
        d = gate(name, v2, worse, world["test"], None, None, CFG, TrainConfig())
        assert not d.promote and "content alone" in d.reason
