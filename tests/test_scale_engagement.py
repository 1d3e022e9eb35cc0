"""The out-of-core engagement path (DuckDB over the parquet log) against the in-memory reference.

The in-memory `features.engagement.engagement_features` is the reference: the main job's features on the
default world must be the same numbers from both, and point-in-time correctness must hold for the new path.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import PRODUCT_KEYED, build_features
from features.config import FeaturesConfig
from features.engagement import engagement_features
from features.engagement_sql import engagement_features_parquet, impressed_pairs, log_time_range, pair_counts_sql
from features.online_writer import ViewPlan, latest_rows
from ltr.data.dataset import Dataset, write_table
from ltr.data.engagement import pair_counts
from ltr.data.schemas import FEATURES, IMPRESSIONS

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


def sql_features(imp_or_path, tmp, **kw):
    path = imp_or_path
    if isinstance(imp_or_path, pd.DataFrame):
        path = tmp / "impressions.parquet"
        write_table(imp_or_path, path, IMPRESSIONS)
    rows = engagement_features_parquet(path, tmp / "qp.parquet", tmp / "p.parquet", FEATURES, PRODUCT_KEYED, **kw)
    qp, p = pd.read_parquet(tmp / "qp.parquet"), pd.read_parquet(tmp / "p.parquet")
    assert rows == {"engagement_qp": len(qp), "engagement_product": len(p)}
    return qp, p


def assert_same_features(ref: pd.DataFrame, got: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same rows in the same order, same keys and times; counts and rates exact, COEC within rtol."""
    assert list(got.columns) == list(ref.columns) and len(got) == len(ref)
    assert (got.dtypes == ref.dtypes).all()
    for c in ref.columns:
        if "coec" in c:
            np.testing.assert_allclose(got[c].to_numpy(), ref[c].to_numpy(), rtol=rtol, atol=0)
        else:
            assert (got[c].to_numpy() == ref[c].to_numpy()).all(), c


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The main job's world (configs/default.yaml): 6,000 products, 400 queries x 30, 250k impressions."""
    from ltr.data.config import load_config
    from ltr.run_config import RunConfig
    from ltr.sim.world import generate_world
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml", RunConfig)
    root = tmp_path_factory.mktemp("world") / "ds"
    generate_world(root, seed=cfg.seed, cfg=cfg.dataset.world, progress=False)
    return root


def test_default_world_features_equal_the_in_memory_reference(default_world, tmp_path):
    """The main job's engagement features: identical keys, days, counts and rates; COEC within 1e-9, and the
    very same float32 values, which is what XGBoost trains on, so the job's models cannot change."""
    imp = pd.read_parquet(default_world / "impressions.parquet")
    ref_qp, ref_p = engagement_features(imp)
    qp, p = sql_features(default_world / "impressions.parquet", tmp_path)
    for ref, got in ((ref_qp, qp), (ref_p, p)):
        assert_same_features(ref, got)
        for c in [c for c in ref.columns if "coec" in c]:
            assert (ref[c].to_numpy(np.float32) == got[c].to_numpy(np.float32)).all(), c
    assert len(qp) > 200_000 and len(p) > 100_000


def test_build_features_streams_the_log_and_counts_match(default_world, tmp_path):
    """build_features never loads the log whole; per-pair counts and impressed pairs equal the pandas ones."""
    ds = Dataset.load(default_world)
    assert ds.has_engagement and ds._impressions is None  # answered from the parquet footer
    info = build_features(default_world, tmp_path / "f", FeaturesConfig(families=["engagement"]), progress=False)
    assert ds._impressions is None
    assert info["views"]["engagement_qp"] == len(pd.read_parquet(tmp_path / "f" / "engagement_qp.parquet"))
    imp = ds.impressions  # loaded on first use, for the reference below
    cut = pd.Timestamp("2026-09-22", tz="UTC")
    path = default_world / "impressions.parquet"
    pd.testing.assert_frame_equal(pair_counts_sql(path, start=cut), pair_counts(imp, start=cut))
    pd.testing.assert_frame_equal(pair_counts_sql(path, end=cut), pair_counts(imp, end=cut))
    pd.testing.assert_frame_equal(impressed_pairs(path), imp[["query_id", "product_id"]].drop_duplicates()
                                  .reset_index(drop=True))
    assert log_time_range(path) == (imp["ts"].min(), imp["ts"].max())


def test_matches_brute_force_recount_and_reference(tmp_path):
    imp = _log()
    qp, p = sql_features(imp, tmp_path)
    ref_qp, ref_p = engagement_features(imp)
    assert_same_features(ref_qp, qp)
    assert_same_features(ref_p, p)
    day = imp["ts"].dt.floor("D")
    for _, row in qp.sample(30, random_state=1).iterrows():
        d = row["event_timestamp"]
        m = ((imp.query_id == row.query_id) & (imp.product_id == row.product_id)
             & (day < d) & (day >= d - pd.Timedelta(days=7)))
        assert row["eng_qp_impr_7d"] == m.sum()
        assert row["eng_qp_clicks_7d"] == imp.loc[m, "clicked"].sum()


def test_rows_never_see_events_on_or_after_their_day(tmp_path):
    """Point-in-time: a row stamped d is the same whether or not the log holds events on day d or later."""
    imp = _log(seed=3)
    cut = T0 + pd.Timedelta(days=20)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before, _ = sql_features(imp[imp.ts < cut].reset_index(drop=True), tmp_path / "a")
    full, _ = sql_features(imp, tmp_path / "b")
    k = ["query_id", "product_id", "event_timestamp"]
    b = before[before.event_timestamp <= cut].set_index(k).sort_index()
    f = full[full.event_timestamp <= cut].set_index(k).sort_index()
    assert len(b) > 10
    pd.testing.assert_frame_equal(b, f)


def test_chunks_threads_and_spill_give_the_same_rows(tmp_path):
    """Keys cut into many chunks, one DuckDB thread or two, a tiny memory limit: the same rows and values."""
    imp = _log(n=3000, seed=5)
    for d in ("one", "many", "t1"):
        (tmp_path / d).mkdir()
    one = sql_features(imp, tmp_path / "one")
    many = sql_features(tmp_path / "one" / "impressions.parquet", tmp_path / "many", chunk_rows=7)
    t1 = sql_features(tmp_path / "one" / "impressions.parquet", tmp_path / "t1", threads=1, memory_limit="64MB")
    for a, b, c in zip(one, many, t1):
        assert_same_features(a, b, rtol=1e-12)
        pd.testing.assert_frame_equal(a, c, check_exact=True)


def test_empty_log_and_bad_files_are_refused_or_written_typed(tmp_path):
    imp = _log(20)
    qp, p = sql_features(imp.iloc[:0], tmp_path)
    assert qp.empty and list(qp.columns[:3]) == ["query_id", "product_id", "event_timestamp"]
    imp.drop(columns="position").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="position"):
        engagement_features_parquet(tmp_path / "bad.parquet", tmp_path / "x", tmp_path / "y", FEATURES, PRODUCT_KEYED)
    imp.assign(position=0).to_parquet(tmp_path / "zero.parquet")
    with pytest.raises(ValueError, match="below 1"):
        engagement_features_parquet(tmp_path / "zero.parquet", tmp_path / "x", tmp_path / "y", FEATURES,
                                    PRODUCT_KEYED)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="windows"):
        engagement_features_parquet(tmp_path / "impressions.parquet", tmp_path / "x", tmp_path / "y", FEATURES,
                                    PRODUCT_KEYED, windows=[0])


def test_latest_rows_for_the_online_store_equal_pandas(tmp_path):
    """The bulk materialize's latest row per entity (DuckDB) is the one a stable sort + keep-last picks."""
    imp = _log(n=2000, seed=9)
    qp, _ = sql_features(imp, tmp_path)
    last = qp.groupby(["query_id", "product_id"]).tail(1).iloc[[0]]
    extra = last.assign(eng_qp_impr_7d=-1.0)  # a tie on (key, time) with a key's latest row: the last written wins
    pd.concat([qp, extra], ignore_index=True).to_parquet(tmp_path / "v.parquet", index=False)
    plan = ViewPlan("v", ["query_id", "product_id"], list(qp.columns[3:]), "event_timestamp", tmp_path / "v.parquet")
    got = latest_rows(plan)
    df = pd.read_parquet(tmp_path / "v.parquet")
    ref = df.sort_values("event_timestamp", kind="stable").drop_duplicates(plan.keys, keep="last")
    key = plan.keys
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  ref.sort_values(key).reset_index(drop=True))
    assert (got["eng_qp_impr_7d"] == -1.0).sum() == 1
