"""The Feast store on a tiny dataset: point-in-time training frames, labels, online reads (SQLite).

`run_online_contract` is shared with tests/test_feast_redis.py so both online stores pass the same checks.
"""
import math
import shutil
import sqlite3

import pandas as pd
import pytest
import yaml
from feast import BigQuerySource, Field
from feast.types import Int64
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


# --- the bulk writer refuses what it would not write as Feast does, before writing anything -----------------------
def reconfigure(store: LtrStore, online: dict | None = None, registry: dict | None = None, **top) -> LtrStore:
    """Feast settings that LtrStore does not render, as an edited feature_store.yaml would carry them; Feast
    itself parses them, so a setting this Feast does not know fails here rather than passing vacuously."""
    from feast import FeatureStore

    path = store.store_dir / "feature_store.yaml"
    conf = yaml.safe_load(path.read_text())
    conf["online_store"].update(online or {})
    if registry:
        conf["registry"] = {"path": conf["registry"], **registry}
    path.write_text(yaml.safe_dump({**conf, **top}, sort_keys=False))
    store.fs = FeatureStore(repo_path=str(store.store_dir))
    return store


def redefine(store: LtrStore, view: str, source_args: dict | None = None, **changes) -> None:
    """Re-register one view with `changes` (FeatureView arguments) and `source_args` (extra FileSource ones)."""
    from feast import FeatureView, FileSource

    fv = store.objects[view]
    ents = {e.join_key: e for e in (store.objects["entity_query"], store.objects["entity_product"])}
    src = FileSource(name=fv.batch_source.name, path=fv.batch_source.path,
                     timestamp_field=fv.batch_source.timestamp_field, **(source_args or {}))
    args = dict(name=view, entities=[ents[k] for k in store.repo.VIEW_KEYS[view]], ttl=fv.ttl,
                schema=list(fv.features), source=src, online=True, tags=dict(fv.tags))
    store.fs.apply([FeatureView(**{**args, **changes})])


def assert_refused(store: LtrStore, match: str) -> None:
    """bulk_materialize raises naming `match`, and no view got a single online row."""
    with pytest.raises(FeatureStoreError, match=match):
        store.bulk_materialize(progress=False)
    assert not any(sqlite_contents(store).values())


@pytest.mark.parametrize("settings, setting", [
    ({"online": {"enable_openai_compatible_store": True}}, "enable_openai_compatible_store"),
    ({"online": {"vector_enabled": True}}, "vector_enabled"),
    ({"registry": {"enable_online_feature_view_versioning": True}}, "enable_online_feature_view_versioning"),
    ({"entity_key_serialization_version": 2}, "entity_key_serialization_version"),
    ({"online": {"type": "remote", "path": "http://127.0.0.1:9"}}, "online_store type 'remote'"),
])
@pytest.mark.filterwarnings("ignore:The serialization version below 3:DeprecationWarning")
def test_bulk_refuses_sqlite_store_settings(built, tmp_path, settings, setting):
    store = reconfigure(LtrStore(built[1], store_dir=tmp_path).apply(), **settings)
    assert_refused(store, f"{setting}.*Fix: use LtrStore.materialize")


@pytest.mark.parametrize("changes, setting", [
    ({"version": "v1"}, "version='v1'"),
    ({"online": False}, "online=False"),
    ({"schema": [Field(name="prod_price", dtype=Int64)]}, r"prod_price: Int64"),
    ({"source_args": {"created_timestamp_column": "prod_price"}}, "created_timestamp_column"),
    ({"source_args": {"field_mapping": {"price": "prod_price"}}}, "field_mapping"),
    ({"source": BigQuerySource(name="pf_bq", table="p.d.t", timestamp_field="event_timestamp")}, "BigQuerySource"),
])
def test_bulk_refuses_view_definitions(built, tmp_path, changes, setting):
    store = LtrStore(built[1], store_dir=tmp_path).apply()
    if "schema" in changes:  # one Int64 feature among the view's Float64 ones
        changes = {"schema": [f for f in store.objects["product_features"].features if f.name != "prod_price"]
                   + changes["schema"]}
    redefine(store, "product_features", **changes)  # after lexical and content: refused before those are written
    assert_refused(store, f"{setting}.*Fix: use LtrStore.materialize")


@pytest.mark.parametrize("edit, match", [
    (lambda df: df.assign(eng_p_impr_90d=1.0), r"undeclared column\(s\) \['eng_p_impr_90d'\]"),
    (lambda df: df.drop(columns="eng_p_ctr_28d"), r"lacks \['eng_p_ctr_28d'\]"),
], ids=["extra-column", "missing-column"])
def test_bulk_refuses_source_that_disagrees_with_view(built, tmp_path, edit, match):
    feat = tmp_path / "features"
    shutil.copytree(built[1], feat, ignore=shutil.ignore_patterns("feast"))
    path = feat / "engagement_product.parquet"  # the last view written: every view is checked before any write
    edit(pd.read_parquet(path)).to_parquet(path, index=False)
    assert_refused(LtrStore(feat, store_dir=tmp_path / "store").apply(), match)


def test_bulk_refuses_before_apply(built, tmp_path):
    store = LtrStore(built[1], store_dir=tmp_path)
    with pytest.raises(FeatureStoreError, match=r"not registered. Fix: call LtrStore.apply\(\)"):
        store.bulk_materialize(progress=False)
    store.apply()
    (store.store_dir / "online.db").unlink()  # registered, but the online tables are gone
    with pytest.raises(FeatureStoreError, match=r"online tables .* do not exist"):
        store.bulk_materialize(progress=False)
    assert not (store.store_dir / "online.db").exists()
