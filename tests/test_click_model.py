"""The click model: position bias, the effect of each attractiveness term, determinism, and the
engagement-vs-relevance correlation it produces on a small generated world."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ltr.sim.click_model import ClickModel, examination, expected_clicks
from ltr.sim.world import WorldConfig, generate_world


def _impressions(n_per_pos: int, positions=range(1, 11), grade: float = 3.0) -> pd.DataFrame:
    pos = np.repeat(np.array(list(positions)), n_per_pos)
    return pd.DataFrame({"query_id": "q", "product_id": "p", "position": pos, "grade": grade,
                         "popularity": 100.0, "price": 20.0, "discount": 0.0})


def test_ctr_falls_with_position_for_equal_relevance() -> None:
    cm = ClickModel()
    sim = cm.simulate(_impressions(40_000), np.random.default_rng(0))
    ctr = sim.groupby("position")["clicked"].mean()
    assert (np.diff(ctr.to_numpy()) < 0).all(), ctr.to_dict()
    # and matches the PBM's expectation
    attract = cm.probabilities(_impressions(1, [1]))["attract"].iloc[0]
    expect = expected_clicks(np.full(10, attract), np.arange(1, 11), cm.eta)
    assert np.allclose(ctr.to_numpy(), expect, atol=0.01)


def test_funnel_is_nested_and_deterministic() -> None:
    cm = ClickModel()
    frame = _impressions(2_000)
    a = cm.simulate(frame, np.random.default_rng(5))
    b = cm.simulate(frame, np.random.default_rng(5))
    c = cm.simulate(frame, np.random.default_rng(6))
    pd.testing.assert_frame_equal(a, b)
    assert not a["clicked"].equals(c["clicked"])
    assert not (a["added_to_cart"] & ~a["clicked"]).any()
    assert not (a["purchased"] & ~a["added_to_cart"]).any()


def test_attractiveness_terms_move_the_right_way() -> None:
    cm = ClickModel()
    base = {"query_id": "q", "grade": 1.0, "popularity": 100.0, "price": 20.0, "discount": 0.0}
    rows = pd.DataFrame([base, dict(base, grade=3.0), dict(base, popularity=10_000.0), dict(base, price=5.0),
                         dict(base, discount=0.4)])
    # z-scores are within a query: give each variant its own query with the base row as reference
    frames = []
    for i in range(1, len(rows)):
        frames.append(pd.concat([rows.iloc[[0]], rows.iloc[[i]]]).assign(query_id=f"q{i}"))
    p = pd.concat(frames, ignore_index=True)
    pr = cm.probabilities(p)
    for i in range(0, len(p), 2):
        assert pr["attract"].iloc[i + 1] > pr["attract"].iloc[i], p.iloc[i + 1].to_dict()
    # relevance drives buying far more than clicking: exact matches convert best
    g = cm.probabilities(pd.DataFrame({"query_id": "q", "grade": [0.0, 3.0], "popularity": 1.0}))
    assert g["p_cart"].iloc[1] * g["p_purchase"].iloc[1] > 5 * g["p_cart"].iloc[0] * g["p_purchase"].iloc[0]
    assert g["attract"].iloc[1] / g["attract"].iloc[0] < 20


def test_bad_input_names_the_field() -> None:
    cm = ClickModel()
    with pytest.raises(ValueError, match="'popularity'"):
        cm.probabilities(pd.DataFrame({"query_id": ["q"], "grade": [1.0]}))
    with pytest.raises(ValueError, match="grade must be in"):
        cm.probabilities(pd.DataFrame({"query_id": ["q"], "grade": [5.0], "popularity": [1.0]}))
    with pytest.raises(ValueError, match="1-based"):
        examination([0, 1, 2])
    with pytest.raises(ValueError, match="'position'"):
        cm.simulate(pd.DataFrame({"query_id": ["q"]}), np.random.default_rng(0))


def test_engagement_is_a_biased_proxy_on_a_small_world(tmp_path) -> None:
    s = generate_world(tmp_path, seed=11, cfg=WorldConfig(n_products=1500, n_queries=120, sessions=8000),
                       progress=False)
    e = s["engagement"]
    assert e["spearman_pairs"] >= 300
    assert 0.3 <= e["spearman_grade_ctr"] <= 0.6, e["spearman_grade_ctr"]
    assert e["queries_top_clicked_irrelevant"] > 0
    bg = e["by_grade"]
    # exact matches are the best converters and take most purchases
    assert bg["3"]["purchase_per_click"] == max(v["purchase_per_click"] for v in bg.values())
    assert bg["3"]["share_of_purchases"] > 0.5
