"""The built-in world: determinism, the layout and contracts, the sizes the issue asks for, ground truth
vs noisy judgments, and the shape of the engagement log."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from ltr.data.dataset import Dataset
from ltr.sim.sessions import EPOCH
from ltr.sim.vocab import PRODUCT_TYPES
from ltr.sim.world import WorldConfig, generate_world

SMALL = {"n_products": 1500, "n_queries": 120, "sessions": 8000}
TABLES = ("products", "queries", "candidates", "truth", "judgments", "impressions")


@pytest.fixture(scope="module")
def default_world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world7")
    return out, generate_world(out, seed=7, progress=False)


def test_same_seed_byte_identical_other_seed_differs(tmp_path) -> None:
    cfg = WorldConfig(**SMALL)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_world(tmp_path / name, seed=seed, cfg=cfg, progress=False)
    for t in TABLES:
        a, b, c = ((tmp_path / n / f"{t}.parquet").read_bytes() for n in "abc")
        assert a == b, f"{t}.parquet differs for the same seed"
        assert a != c, f"{t}.parquet identical for different seeds"
    assert (tmp_path / "a" / "metadata.json").read_bytes() == (tmp_path / "b" / "metadata.json").read_bytes()


def test_default_world_meets_the_issue(default_world) -> None:
    out, s = default_world
    ds = Dataset.load(out)  # validates every table on read
    assert len(ds.products) >= 5000 and ds.products["product_type"].nunique() >= 25
    assert len(ds.queries) >= 400
    assert set(ds.queries["query_type"]) == {"broad", "attribute", "brand", "misspelt", "tail"}
    assert set(ds.queries["segment"]) == {"head", "torso", "tail"}
    assert ds.candidates.groupby("query_id").size().min() >= 30
    truth = ds.load_truth()
    assert set(truth["grade"]) == {0, 1, 2, 3}
    assert len(truth) == len(ds.candidates)
    # realistic product text
    title = ds.products["title"]
    assert title.str.len().between(15, 160).all() and ds.products["bullet_points"].str.contains("\n").all()
    assert (ds.products["price"] > 0).all() and ds.products["discount"].between(0, 0.5).all()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"] == "world" and meta["seed"] == 7 and meta["simulated_engagement"] is True
    assert meta["counts"]["impressions"] == len(ds.impressions)
    assert 150_000 <= len(ds.impressions) <= 400_000
    assert 0.3 <= meta["spearman_grade_ctr"] <= 0.6
    assert meta["engagement"]["queries_top_clicked_irrelevant"] > 0
    assert s["counts"] == meta["counts"]


def test_judgments_are_a_noisy_tenth(default_world) -> None:
    out, _ = default_world
    ds = Dataset.load(out)
    truth = ds.load_truth()
    frac = len(ds.judgments) / len(truth)
    assert 0.08 <= frac <= 0.12
    m = ds.judgments.merge(truth, on=["query_id", "product_id"], suffixes=("", "_true"))
    assert len(m) == len(ds.judgments)  # every judged pair is a candidate
    agree = (m["grade"] == m["grade_true"]).mean()
    assert 0.7 <= agree <= 0.95, agree
    off = m[m["grade"] != m["grade_true"]]
    assert (off["grade"] - off["grade_true"]).abs().eq(1).mean() > 0.6  # mostly adjacent grades
    assert set(ds.judgments["esci_label"]) <= {"E", "S", "C", "I"}


def test_grades_follow_structure(default_world) -> None:
    out, _ = default_world
    ds = Dataset.load(out)
    q = ds.queries[ds.queries["query_type"] == "broad"].iloc[0]
    t = ds.load_truth().merge(ds.products[["product_id", "product_type"]], on="product_id")
    t = t[t["query_id"] == q["query_id"]]
    # a broad query: every product of its type is exact, nothing else is
    assert (t.loc[t["product_type"] == q["product_type"], "grade"] == 3).all()
    assert (t.loc[t["product_type"] != q["product_type"], "grade"] < 3).all()


def test_impressions_log_shape(default_world) -> None:
    out, _ = default_world
    ds = Dataset.load(out)
    imp = ds.impressions
    assert imp["ts"].min() >= EPOCH and imp["ts"].max() < EPOCH + pd.Timedelta(days=28)
    assert imp["position"].between(1, 10).all()
    per_req = imp.groupby("request_id")
    assert (per_req["ts"].nunique() == 1).all() and (per_req["query_id"].nunique() == 1).all()
    assert imp["ts"].is_monotonic_increasing
    assert not (imp["purchased"] & ~imp["added_to_cart"]).any() and not (imp["added_to_cart"] & ~imp["clicked"]).any()
    weeks = imp["ts"].dt.isocalendar().week.nunique()
    assert weeks >= 4
    # head queries get more traffic than tail ones
    vol = imp.groupby("query_id")["request_id"].nunique()
    seg = ds.queries.set_index("query_id")["segment"]
    assert vol.groupby(seg.reindex(vol.index)).mean()["head"] > 3 * vol.groupby(seg.reindex(vol.index)).mean()["tail"]


def test_popular_irrelevant_items_win_clicks(default_world) -> None:
    out, _ = default_world
    ds = Dataset.load(out)
    imp = ds.impressions.merge(ds.load_truth(), on=["query_id", "product_id"])
    imp = imp.merge(ds.products[["product_id", "popularity"]], on="product_id")
    irr = imp[imp["grade"] == 0]
    pop_hi = irr["popularity"] > irr["popularity"].median()
    # among irrelevant items, popular ones are clicked more at the same position
    top = irr["position"] <= 3
    assert irr[pop_hi & top]["clicked"].mean() > 1.3 * irr[~pop_hi & top]["clicked"].mean()


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="n_prodcts"):
        WorldConfig(n_prodcts=10)
    with pytest.raises(ValidationError, match="n_products"):
        WorldConfig(n_products=5)
    with pytest.raises(ValidationError, match="unknown query type"):
        WorldConfig(query_mix={"fancy": 1.0})
    with pytest.raises(ValidationError, match="unknown click_model field"):
        WorldConfig(click_model={"etaa": 1.0})
    assert len(PRODUCT_TYPES) >= 25
    d = WorldConfig()
    assert d.n_products >= 5000 and d.n_queries >= 400 and d.n_candidates >= 30
    with pytest.raises(TypeError, match="WorldConfig"):
        generate_world("/nonexistent", cfg={"n_products": 100}, progress=False)  # type: ignore[arg-type]
