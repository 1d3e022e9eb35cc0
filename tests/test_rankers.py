"""ltr.rankers and ltr.train: the ranker contract, grouped splits, reproducibility."""
import numpy as np
import pytest
from fixtures.synthetic_frame import synthetic_training_frame
from sklearn.base import clone

from ltr.data import metrics as M
from ltr.data.splits import SplitError
from ltr.rankers import (
    LGBMLambdaMART,
    RankerError,
    XGBLambdaMART,
    grouped_split,
    make_ranker,
)
from ltr.targets import make_labels
from ltr.train import feature_columns, train_and_evaluate
from ltr.train_config import TrainConfig


@pytest.fixture(scope="module")
def frame():
    return synthetic_training_frame(n_queries=30, items_per_query=12, seed=3)


def small_cfg(**kw) -> TrainConfig:
    d = {"model": {"n_estimators": 25, "early_stopping_rounds": 10, "n_jobs": 1}}
    d.update(kw)
    return TrainConfig.model_validate(d)


def test_grouped_split_keeps_queries_whole(frame):
    tr, va, te = grouped_split(frame["query_id"], [0.6, 0.2, 0.2], seed=1)
    assert (tr.astype(int) + va + te == 1).all()
    sets = [set(frame.loc[m, "query_id"]) for m in (tr, va, te)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(sets[0]) == 18 and len(sets[1]) == 6
    again = grouped_split(frame["query_id"], [0.6, 0.2, 0.2], seed=1)
    assert all((a == b).all() for a, b in zip(again, (tr, va, te)))
    with pytest.raises(SplitError, match="sum to 1"):  # the floor's error; RankerError is one too
        grouped_split(frame["query_id"], [0.5, 0.2])


def test_feature_columns_exclude_label_inputs(frame):
    feats = feature_columns(frame, TrainConfig())
    for reserved in ("content_score", "clicks", "impressions", "grade", "heldout_carts", "click_propensity"):
        assert reserved not in feats
    assert "ce_score" in feats
    assert not [f for f in feature_columns(frame, TrainConfig(exclude_feature_prefixes=["ce_"])) if f.startswith("ce_")]
    with pytest.raises(RankerError, match="nope"):
        feature_columns(frame, TrainConfig(features=["ce_score", "nope"]))


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_ranker_learns_and_knows_features(frame, kind):
    cfg = small_cfg(model={"kind": kind, "n_estimators": 25, "n_jobs": 1})
    res = train_and_evaluate(frame, cfg)
    rnd = M.evaluate(res.test_frame, np.random.default_rng(0).random(len(res.test_frame)), cfg.columns)
    assert res.metrics["ndcg@10"] > rnd["ndcg@10"] + 0.05
    assert res.model.feature_names_ == res.features
    # columns are matched by name, not position
    shuffled = res.test_frame[res.features[::-1] + ["query_id"]]
    assert np.allclose(res.model.predict(shuffled), res.model.predict(res.test_frame))
    imp = res.model.feature_importance()
    assert set(imp) == set(res.features) and imp["ce_score"] > 0


def test_sklearn_contract(frame):
    m = make_ranker("xgboost", n_estimators=7, max_depth=3, n_jobs=1)
    assert m.get_params()["n_estimators"] == 7
    c = clone(m).set_params(n_estimators=5)
    y, _ = make_labels(frame)
    feats = feature_columns(frame)
    c.fit(frame[feats], y, frame["query_id"], eval_set=None)
    assert c.best_iteration_ <= 4 and len(c.predict(frame[feats])) == len(frame)
    # an explicit grouped eval_set works and numpy input takes positional names
    tr, va = grouped_split(frame["query_id"], [0.7, 0.3], 0)
    c2 = XGBLambdaMART(n_estimators=10, early_stopping_rounds=3, n_jobs=1).fit(
        frame.loc[tr, feats].to_numpy(), y[tr], frame.loc[tr, "query_id"],
        eval_set=(frame.loc[va, feats].to_numpy(), y[va], frame.loc[va, "query_id"].to_numpy()))
    assert c2.feature_names_[0] == "f0" and np.isfinite(c2.predict(frame.loc[va, feats].to_numpy())).all()


def test_bad_inputs_are_named(frame):
    feats = feature_columns(frame)
    y, _ = make_labels(frame)
    with pytest.raises(RankerError, match="ndcg_exp_gain"):
        XGBLambdaMART(n_estimators=2, ndcg_exp_gain=True).fit(frame[feats], y, frame["query_id"])
    m = XGBLambdaMART(n_estimators=3, early_stopping_rounds=None).fit(frame[feats], y, frame["query_id"])
    with pytest.raises(RankerError, match="ce_score"):
        m.predict(frame.drop(columns="ce_score"))
    p = m.predict(frame.drop(columns="ce_score"), missing="nan")   # absent feature -> NaN, like training
    assert np.isfinite(p).all()
    with pytest.raises(RankerError, match="qid"):
        m.fit(frame[feats], y, frame["query_id"].iloc[:-1])
    with pytest.raises(RankerError, match="not fitted"):
        LGBMLambdaMART().predict(frame[feats])
    with pytest.raises(RankerError, match="unknown"):
        make_ranker("catboost")


def test_bucketed_labels_with_exponential_gain(frame):
    cfg = small_cfg(target={"label_mode": "bucket"})
    res = train_and_evaluate(frame, cfg)
    assert res.model.get_params()["ndcg_exp_gain"] is True and res.metrics["ndcg@10"] > 0.5


def test_same_seed_same_metrics(frame):
    cfg = small_cfg(model={"n_estimators": 20, "subsample": 0.8, "colsample_bytree": 0.8, "n_jobs": 2})
    a, b = train_and_evaluate(frame, cfg), train_and_evaluate(frame, cfg)
    for k, v in a.metrics.items():
        assert b.metrics[k] == pytest.approx(v, abs=1e-6, nan_ok=True)
    c = train_and_evaluate(frame, cfg.model_copy(update={"seed": 1}))
    assert set(c.test_frame["query_id"]) != set(a.test_frame["query_id"])  # seed moves the split


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_monotone_holds_declared_directions(kind):
    """Labels that dip in the middle of bienc_cos: free trees learn the dip, monotone ones cannot, and an
    undeclared feature (prod_price) stays free either way."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n_q, per = 120, 10
    cos = rng.random(n_q * per)
    price = rng.random(n_q * per)
    grade = np.where((cos > 0.4) & (cos < 0.6), 0, np.rint(3 * cos)) + np.rint(2 * price)
    X = pd.DataFrame({"bienc_cos": cos, "prod_price": price})
    qid = np.repeat(np.arange(n_q), per)
    grid = pd.DataFrame({"bienc_cos": np.linspace(0, 1, 101), "prod_price": 0.5})
    params = {"n_estimators": 60, "early_stopping_rounds": None, "n_jobs": 1, "max_depth": 4}
    free = make_ranker(kind, **params).fit(X, grade.astype(float), qid).predict(grid)
    held = make_ranker(kind, monotone=True, **params).fit(X, grade.astype(float), qid).predict(grid)
    assert (np.diff(free) < -1e-6).any(), "the free trees should learn the dip (else this test proves nothing)"
    assert (np.diff(held) >= -1e-6).all()
    rising_price = pd.DataFrame({"bienc_cos": 0.5, "prod_price": np.linspace(0, 1, 101)})
    m = make_ranker(kind, monotone=True, **params).fit(X, grade.astype(float), qid)
    assert m.get_params()["monotone"] is True
    assert np.ptp(m.predict(rising_price)) > 0  # the undeclared feature is used, unconstrained
