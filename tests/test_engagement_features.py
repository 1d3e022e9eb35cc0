"""Engagement features: equal to a brute-force recount, and blind to events at or after the row's day."""
import numpy as np
import pandas as pd
import pytest

from features.engagement import (
    engagement_features,
    feature_names,
    position_expected_clicks,
)

T0 = pd.Timestamp("2024-05-01", tz="UTC")


def _log(n=400, seed=0, days=40):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(n)],
        "ts": T0 + pd.to_timedelta(rng.integers(0, days * 86400, n), unit="s"),
        "query_id": rng.choice(["qa", "qb", "qc"], n), "product_id": rng.choice(["p1", "p2", "p3", "p4"], n),
        "position": rng.integers(1, 6, n), "clicked": rng.random(n) < 0.3,
        "added_to_cart": rng.random(n) < 0.1, "purchased": rng.random(n) < 0.05,
    })


def test_matches_brute_force_recount():
    imp = _log()
    qp, p = engagement_features(imp, windows=[7, 28], smoothing=10.0)
    day = imp["ts"].dt.floor("D")
    for _, row in qp.sample(40, random_state=1).iterrows():
        d = row["event_timestamp"]
        for w in (7, 28):
            m = ((imp.query_id == row.query_id) & (imp.product_id == row.product_id)
                 & (day < d) & (day >= d - pd.Timedelta(days=w)))
            assert row[f"eng_qp_impr_{w}d"] == m.sum()
            assert row[f"eng_qp_clicks_{w}d"] == imp.loc[m, "clicked"].sum()
            assert row[f"eng_qp_purch_{w}d"] == imp.loc[m, "purchased"].sum()
            mu = imp.loc[day < d, "clicked"].mean()
            assert row[f"eng_qp_ctr_{w}d"] == pytest.approx((imp.loc[m, "clicked"].sum() + 10 * mu) / (m.sum() + 10))
    for _, row in p.sample(20, random_state=2).iterrows():
        m = (imp.product_id == row.product_id) & (day < row.event_timestamp) & (
            day >= row.event_timestamp - pd.Timedelta(days=7))
        assert row["eng_p_atc_7d"] == imp.loc[m, "added_to_cart"].sum()
    assert list(qp.columns[3:]) == feature_names("eng_qp", [7, 28])


def test_rows_never_see_events_on_or_after_their_day():
    imp = _log(seed=3)
    cut = T0 + pd.Timedelta(days=20)
    before, _ = engagement_features(imp[imp.ts < cut])
    full, _ = engagement_features(imp)
    # Every row stamped at or before the cut day is identical whether or not later events exist.
    b = before[before.event_timestamp <= cut].set_index(["query_id", "product_id", "event_timestamp"])
    f = full[full.event_timestamp <= cut].set_index(["query_id", "product_id", "event_timestamp"])
    assert len(b) > 10
    pd.testing.assert_frame_equal(b.sort_index(), f.sort_index())
    # and a future event changes nothing before its day but does change the day after
    extra = pd.DataFrame([{"request_id": "late", "ts": cut + pd.Timedelta(hours=5), "query_id": "qa",
                           "product_id": "p1", "position": 1, "clicked": True, "added_to_cart": False,
                           "purchased": False}])
    more, _ = engagement_features(pd.concat([imp, extra], ignore_index=True))
    k = more[(more.query_id == "qa") & (more.product_id == "p1")].set_index("event_timestamp")
    old = full[(full.query_id == "qa") & (full.product_id == "p1")].set_index("event_timestamp")
    day_after = cut + pd.Timedelta(days=1)
    assert k.loc[day_after, "eng_qp_clicks_7d"] == old["eng_qp_clicks_7d"][old.index <= day_after].iloc[-1] + 1
    assert (k.loc[k.index <= cut, "eng_qp_clicks_7d"] == old.loc[old.index <= cut, "eng_qp_clicks_7d"]).all()


def test_position_prior_and_debiased_ctr():
    # Position 1 always clicked, position 2 never: a click at position 2 is worth more than one at 1.
    rows = []
    for i in range(50):
        rows.append((f"r{i}", "q", "top", 1, True))
        rows.append((f"r{i}", "q", "low", 2, i == 0))
    imp = pd.DataFrame(rows, columns=["request_id", "query_id", "product_id", "position", "clicked"])
    imp["ts"] = T0
    imp["added_to_cart"] = imp["purchased"] = False
    day = np.zeros(len(imp), dtype=np.int64)
    prior = position_expected_clicks(imp, day, strength=1.0)
    assert prior[imp.position.to_numpy() == 1].mean() > 0.9
    assert prior[imp.position.to_numpy() == 2].mean() < 0.1
    qp, _ = engagement_features(imp, windows=[7], smoothing=1.0, position_prior_strength=1.0)
    nxt = qp[qp.event_timestamp == T0 + pd.Timedelta(days=1)].set_index("product_id")
    assert nxt.loc["low", "eng_qp_coec_7d"] > nxt.loc["low", "eng_qp_ctr_7d"] / 0.5  # debiased up
    assert nxt.loc["top", "eng_qp_coec_7d"] == pytest.approx(1.0, abs=0.05)  # clicked as often as expected


def test_bad_input_is_named():
    imp = _log(20).drop(columns="position")
    with pytest.raises(ValueError, match="position"):
        engagement_features(imp)
    with pytest.raises(ValueError, match="windows"):
        engagement_features(_log(20), windows=[0])
