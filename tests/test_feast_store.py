"""The Feast store on a tiny dataset: point-in-time training frames, labels, online reads (SQLite).

`run_online_contract` is shared with tests/test_feast_redis.py so both online stores pass the same checks.
"""
import math
import sqlite3

import pandas as pd
import pytest
from fixtures.tiny_dataset import T0, tiny_dataset

from features.build import build_features
from features.config import FeaturesConfig
from features.store import FeatureStoreError, LtrStore
from ltr.data.dataset import read_table
from ltr.data.schemas import query_id

Q1 = query_id("hydro flask 32 oz")


def make_features(tmp_path_factory, name: str = "feat"):
    root = tmp_path_factory.mktemp(name)
    ds = tiny_dataset(root / "ds")
    labels = pd.DataFrame({  # an LLM label that disagrees with the human grade of (Q1, P000), one on an unjudged pair
        "query_id": [Q1, Q1], "product_id": ["P000", "P001"], "score": [1.0, 2 / 3],
        "p0": [0.0, 0.0], "p1": [0.0, 0.0], "p2": [0.0, 1.0], "p3": [1.0, 0.0],
        "backend": ["openai", "openai"], "model": ["m", "m"], "prompt_version": ["v1", "v1"],
        "cost": [0.0, 0.0], "created_at": [T0 + pd.Timedelta(days=40)] * 2})
    ce = pd.DataFrame({"query_id": [Q1, Q1], "product_id": ["P000", "P002"], "ce_score": [0.9, 0.1]})
    info = build_features(ds, root / "features", FeaturesConfig(), ce_scores=ce, progress=False, labels=labels)
    return ds, root / "features", info


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return make_features(tmp_path_factory)


@pytest.fixture(scope="module")
def store(built):
    return LtrStore(built[1], FeaturesConfig()).apply()


def test_build_writes_every_view(built):
    _, feat, info = built
    assert set(info["views"]) == {"lexical", "product_features", "engagement_qp", "engagement_product", "content",
                                  "relevance_labels"}
    assert (feat / "manifest.json").exists()


def test_engagement_point_in_time_excludes_later_events(built, store):
    ds, _, _ = built
    imp = read_table(ds / "impressions.parquet", "impressions")
    t = T0 + pd.Timedelta(days=4, hours=18)  # day-4 impressions happen at 12:00, before t but on t's own day
    ent = pd.DataFrame({"query_id": [Q1] * 2, "product_id": ["P000", "P002"], "event_timestamp": [t, t]})
    tf = store.get_training_frame(ent, labels=False)
    for _, row in tf.iterrows():
        mine = imp[(imp.query_id == Q1) & (imp.product_id == row.product_id)]
        strictly_before_day = mine[mine.ts < t.floor("D")]
        assert row["eng_qp_impr_7d"] == len(strictly_before_day) == 4
        assert row["eng_qp_clicks_7d"] == strictly_before_day.clicked.sum()
        assert row["eng_qp_impr_28d"] < len(mine)  # the log has later events: none of them leaked in


def test_missing_features_are_nan_not_dropped(store):
    ent = pd.DataFrame({"query_id": ["q_unknown", Q1, Q1], "product_id": ["P000", "NOPE", "P000"],
                        "event_timestamp": [T0, T0 + pd.Timedelta(days=3), T0 - pd.Timedelta(days=1)]})
    tf = store.get_training_frame(ent)
    assert len(tf) == 3 and list(tf.product_id) == ["P000", "NOPE", "P000"]
    assert math.isnan(tf.loc[0, "lex_bm25_title"]) and tf.loc[0, "prod_price"] == 10.0  # product view still joins
    assert tf.loc[1, ["lex_bm25_title", "prod_price", "eng_qp_ctr_7d", "label_score"]].isna().all()
    assert math.isnan(tf.loc[2, "eng_qp_impr_7d"])  # before the first impression: no engagement row yet
    assert math.isnan(tf.loc[1, "ce_score"]) and tf.loc[0, "prod_desc_len"] != tf.loc[0, "prod_desc_len"]


def test_labels_join_with_labeler_priority(built, store):
    ds, _, _ = built
    judg = read_table(ds / "judgments.parquet", "judgments")
    human = int(judg[(judg["query"] == "hydro flask 32 oz") & (judg.product_id == "P000")].grade.iloc[0])
    ent = pd.DataFrame({"query_id": [Q1] * 3, "product_id": ["P000", "P001", "P002"],
                        "event_timestamp": [T0 + pd.Timedelta(days=2)] * 3})
    tf = store.get_training_frame(ent).set_index("product_id")
    assert human != 3  # the LLM said 3: human must win
    assert tf.loc["P000", "label_grade"] == human and tf.loc["P000", "labeler_kind"] == "human"
    assert tf.loc["P001", "label_grade"] == pytest.approx(2.0) and tf.loc["P001", "labeler"] == "llm:m@v1"
    assert tf.loc["P000", "ce_score"] == 0.9 and math.isnan(tf.loc["P001", "ce_score"])
    assert store.fs.get_label_view("relevance_labels").conflict_policy.value == "labeler_priority"


def test_bad_entity_df_is_named(store):
    with pytest.raises(FeatureStoreError, match="event_timestamp"):
        store.get_training_frame(pd.DataFrame({"query_id": [Q1], "product_id": ["P000"]}))
    with pytest.raises(FeatureStoreError, match="timestamp"):
        store.get_training_frame(pd.DataFrame({"query_id": [Q1], "product_id": ["P000"],
                                               "event_timestamp": ["yesterday"]}))
    with pytest.raises(FeatureStoreError, match="product_ids"):
        store.get_online_features(Q1, [])


def run_online_contract(store: LtrStore, second: LtrStore) -> None:
    """Online reads return what was materialized; Feast's path and the bulk path store the same thing."""
    store.materialize()
    pids = [f"P{i:03d}" for i in range(100)]  # 12 known products, 88 unknown: one call, 100 rows
    got = store.get_online_features(Q1, pids)
    assert len(got) == 100 and list(got.product_id) == pids
    src = pd.read_parquet(store.features_dir / "engagement_qp.parquet")
    last = src[src.query_id == Q1].sort_values("event_timestamp").groupby("product_id").tail(1).set_index(
        "product_id")
    g = got.set_index("product_id")
    for pid in last.index:
        assert g.loc[pid, "eng_qp_ctr_28d"] == pytest.approx(last.loc[pid, "eng_qp_ctr_28d"])
    assert g.loc["P001", "prod_price"] != g.loc["P001", "prod_price"]  # unknown price stays NaN online
    assert g.loc["P050"].drop(labels=["query_id"]).isna().all()
    assert g.loc["P000", "ce_score"] == 0.9
    slow = store.get_online_features(Q1, pids, fast=False)  # Feast's own reader
    pd.testing.assert_frame_equal(got, slow)
    n = second.bulk_materialize(progress=False)
    assert n["engagement_qp"] == src.groupby(["query_id", "product_id"]).ngroups
    bulk = second.get_online_features(Q1, pids)
    pd.testing.assert_frame_equal(got, bulk)


def sqlite_contents(store: LtrStore) -> dict[str, list[tuple]]:
    """Every stored row of every view except created_ts (the write time): the bytes Feast reads back."""
    with sqlite3.connect(store.store_dir / "online.db") as con:
        return {v: sorted(con.execute(f'SELECT entity_key, feature_name, value, value_text, event_ts '
                                      f'FROM "ltr_{v}"').fetchall()) for v in store.views}


def test_online_sqlite_roundtrip(built, tmp_path):
    cfg = FeaturesConfig()
    a = LtrStore(built[1], cfg, store_dir=tmp_path / "a").apply()
    b = LtrStore(built[1], cfg, store_dir=tmp_path / "b").apply()
    run_online_contract(a, b)
    # not just equal reads: byte-identical rows (keys, ValueProtos, value_text, event_ts) to Feast's writer
    want = sqlite_contents(a)
    assert sum(len(r) for r in want.values()) > 0
    assert sqlite_contents(b) == want
    b.bulk_materialize(progress=False)  # re-running is idempotent
    assert sqlite_contents(b) == want


def test_config_is_strict():
    with pytest.raises(ValueError, match="online_stor"):
        FeaturesConfig(online_stor="redis")
    with pytest.raises(ValueError, match="windows_days"):
        FeaturesConfig(windows_days=[7, 7])
