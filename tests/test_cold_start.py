"""Cold queries (engagement absent): masked training, the cold slice in every evaluation, the cold rule."""
import numpy as np
import pandas as pd
import pytest

from ltr.cold_route import evaluate_cold_routed, fit_cold_route
from ltr.targets import make_labels
from ltr.train import (
    cold_rows,
    cold_training_frame,
    content_only_config,
    engagement_columns,
    evaluate_ranker,
    feature_columns,
    fit_ranker,
    mask_engagement,
    training_labels,
)
from ltr.train_config import TrainConfig
from ltr.tuning import choose_operating_point

MODEL = {"n_estimators": 60, "early_stopping_rounds": None, "max_depth": 3, "n_jobs": 1}


def shop(n_queries: int = 80, per_query: int = 20, seed: int = 0) -> pd.DataFrame:
    """Engagement that knows the grade almost exactly, a content feature that knows it noisily: the shape
    in which a model trained only on logged queries puts everything on engagement."""
    rng = np.random.default_rng(seed)
    n = n_queries * per_query
    grade = rng.choice(4, size=n, p=[0.4, 0.2, 0.2, 0.2]).astype(float)
    imp = rng.integers(50, 200, n).astype(float)
    clicks = rng.binomial(imp.astype(int), 0.02 + 0.08 * grade).astype(float)
    return pd.DataFrame({
        "query_id": np.repeat([f"q{i:03d}" for i in range(n_queries)], per_query),
        "product_id": [f"p{i:05d}" for i in range(n)],
        "bienc_cos": grade / 3 + rng.normal(0, 0.35, n),
        "lex_cov_all": np.clip(grade / 3 + rng.normal(0, 0.5, n), 0, 1),
        "eng_qp_ctr_28d": clicks / imp + rng.normal(0, 0.003, n),
        "eng_p_ctr_28d": clicks / imp + rng.normal(0, 0.01, n),
        "content_score": np.clip(grade / 3 + rng.normal(0, 0.15, n), 0, 1),
        "impressions": imp, "clicks": clicks, "carts": np.floor(clicks / 4), "purchases": np.floor(clicks / 8),
        "heldout_impressions": imp, "heldout_clicks": clicks, "heldout_carts": np.floor(clicks / 4),
        "heldout_purchases": np.floor(clicks / 8), "grade": grade,
    })


def _split(f: pd.DataFrame):
    test = f["query_id"] >= "q060"
    return f[~test].reset_index(drop=True), f[test].reset_index(drop=True)


def test_masking_touches_only_engagement_and_the_chosen_share():
    f = shop(40, 10)
    assert engagement_columns(f.columns) == ["eng_qp_ctr_28d", "eng_p_ctr_28d"]
    m = mask_engagement(f)
    assert m[engagement_columns(f.columns)].isna().all().all() and m["bienc_cos"].equals(f["bienc_cos"])
    cfg = TrainConfig(cold_query_share=0.25, cold_product_share=0.0)
    c = cold_training_frame(f, cfg)
    cold_q = c.groupby("query_id")["eng_qp_ctr_28d"].apply(lambda s: s.isna().all())
    assert cold_q.sum() == 10 and c.groupby("query_id")["eng_qp_ctr_28d"].apply(lambda s: s.isna().any()).sum() == 10
    assert cold_training_frame(f, cfg).equals(c)  # seeded
    none = cold_training_frame(f, TrainConfig(cold_query_share=0.0, cold_product_share=0.0))
    assert none is f
    prods = cold_training_frame(f, TrainConfig(cold_query_share=0.0, cold_product_share=0.5))
    assert prods["eng_p_ctr_28d"].isna().sum() == 200


def test_evaluation_reports_warm_and_cold():
    train, test = _split(shop())
    cfg = TrainConfig(model=MODEL)
    summary, pq = evaluate_ranker(fit_ranker(train, cfg), test, cfg)
    assert {"ndcg@10", "ndcg@10/cold", "cart_recall@10/cold"} <= set(summary)
    assert "ndcg@10/cold" in pq.columns and summary["ndcg@10/cold"] == pytest.approx(pq["ndcg@10/cold"].mean())


def test_masked_training_lifts_cold_queries_and_keeps_warm():
    """Training only on logged queries leaves new queries to whatever the engagement splits' default
    directions give; masking engagement for a share of queries (labelled by content alone) teaches the
    trees a content path. Measured against the content-only model on the same queries."""
    train, test = _split(shop())
    masked = TrainConfig(model=MODEL, cold_query_share=0.5, cold_product_share=0.1)
    content_only = content_only_config(masked)
    assert feature_columns(train, content_only) == ["bienc_cos", "lex_cov_all"]
    floor, _ = evaluate_ranker(fit_ranker(train, content_only), test, content_only)
    champion, _ = evaluate_ranker(fit_ranker(train, masked), test, masked)
    warm_only_cfg = TrainConfig(model=MODEL)  # the default: no masking
    warm_only, _ = evaluate_ranker(fit_ranker(train, warm_only_cfg), test, warm_only_cfg)
    assert champion["ndcg@10/cold"] > warm_only["ndcg@10/cold"] + 0.005
    assert champion["ndcg@10"] >= warm_only["ndcg@10"] - 0.005 and champion["ndcg@10"] > floor["ndcg@10"]
    # the gap to the content-only model that is left (see docs/cold.md): within 0.01 here
    assert champion["ndcg@10/cold"] > floor["ndcg@10"] - 0.01


def test_the_registered_model_ranks_cold_queries_no_worse_than_the_content_only_model():
    """Issue 16, item 4: the model as registered (trees + cold route chosen on the training queries) ranks the
    held-out queries, engagement absent, at least as well as the content-only model on the same queries, with
    no tolerance. On this shop the route keeps the trees (cross-validation finds nothing clearly better) and
    they clear the floor narrowly; a change that costs cold queries ranking quality fails here."""
    train, test = _split(shop())
    cfg = TrainConfig(model=MODEL, cold_query_share=0.5, cold_product_share=0.1)
    content_only = content_only_config(cfg)
    floor, _ = evaluate_ranker(fit_ranker(train, content_only), test, content_only)
    feats = feature_columns(train, cfg)
    model = fit_ranker(train, cfg, feats)
    route = fit_cold_route(train, cfg, feats)
    routed = evaluate_cold_routed(model, route, test, cfg)
    assert routed["ndcg@10/cold_routed"] >= floor["ndcg@10/cold"], (route.validation_, routed, floor)


def test_cold_query_rows_are_labelled_by_content_alone():
    f = shop(40, 10)
    cfg = TrainConfig(model=MODEL, cold_query_share=0.5)
    y, _ = training_labels(f, cfg)
    blended, _ = make_labels(f, cfg.target, cfg.columns)
    content, _ = make_labels(f, cfg.target.model_copy(update={"blend_weight": 1.0}), cfg.columns)
    q_rows, _ = cold_rows(f, cfg)
    assert q_rows.sum() == 200 and np.array_equal(y[q_rows], content[q_rows])
    assert np.array_equal(y[~q_rows], blended[~q_rows])


def test_operating_point_keeps_the_cold_rule():
    trials = pd.DataFrame({"number": [0, 1, 2], "content": [0.95, 0.90, 0.80], "engagement": [0.60, 0.60, 0.50],
                           "cold": [0.50, 0.70, 0.72], "params_alpha": [1.0, 2.0, 3.0]})
    op = choose_operating_point(trials, baseline_engagement=0.60, tolerance=0.01, cold_floor=0.65)
    assert op["number"] == 1 and op["constraint_met"] and op["cold"] == 0.70
    op = choose_operating_point(trials, baseline_engagement=0.60, tolerance=0.01, cold_floor=0.71)
    assert op["number"] == 2 and not op["constraint_met"]  # the cold rule outranks the engagement floor
    op = choose_operating_point(trials, baseline_engagement=0.60, tolerance=0.01)
    assert op["number"] == 0 and op["constraint_met"]
