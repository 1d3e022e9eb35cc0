"""Mining (ltr/retrieval/mining.py): difficulty levels from retriever agreement on hand-made ranks whose
answer is known, the label budget spread over levels (sums to the budget, seeded), `ltr mine` with bad
input, and a catalog without candidate lists through retrieval, mining, a cascade labeler, Feast features
and training on the tiny world (labels carry the level as provenance)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openai_server import OpenAIServer
from typer.testing import CliRunner

from ltr.cli import app
from ltr.data.dataset import Dataset, write_table
from ltr.retrieval import DEFAULT_WEIGHTS, LEVELS, MiningConfig, RetrievalError, allocate_budget, mine
from ltr.retrieval.mining import quotas

runner = CliRunner()
N = np.nan

# (rank_bm25, rank_bienc) -> level, with top = 3
TWO = [((1, 1), "easy_positive"), ((3, 2), "easy_positive"), ((2, N), "hard_positive"), ((1, 9), "hard_positive"),
       ((N, 1), "hard_negative"), ((8, 2), "hard_negative"), ((5, 6), "medium"), ((4, 4), "medium"),
       ((N, 7), "easy_negative"), ((9, N), "easy_negative")]
# (rank_bm25, rank_bienc, rank_champion): the champion re-ranks the union, so it ranks every row
THREE = [((1, 1, 1), "easy_positive"), ((1, 2, 9), "medium"), ((1, N, 2), "medium"), ((N, 2, 3), "medium"),
         ((1, N, 8), "hard_positive"), ((2, 5, 4), "hard_positive"), ((N, 9, 2), "hard_negative"),
         ((N, 2, 7), "hard_negative"), ((5, 6, 9), "medium"), ((N, 6, 10), "easy_negative"),
         ((7, N, 4), "easy_negative")]


def _table(rows, cols) -> pd.DataFrame:
    ranks = pd.DataFrame([r for r, _ in rows], columns=cols, dtype=float)
    return pd.concat([pd.DataFrame({"query_id": "q1", "product_id": [f"p{i}" for i in range(len(rows))]}), ranks],
                     axis=1)


@pytest.mark.parametrize("rows, cols", [(TWO, ["rank_bm25", "rank_bienc"]),
                                        (THREE, ["rank_bm25", "rank_bienc", "rank_champion"])], ids=["two", "three"])
def test_levels_follow_the_rules_on_hand_made_ranks(rows, cols):
    got = mine(_table(rows, cols), MiningConfig(top=3))
    assert got["level"].tolist() == [lvl for _, lvl in rows]
    assert set(got.columns) == {"query_id", "product_id", *cols, "level"}


def test_levels_need_only_ranks_and_do_not_depend_on_row_order_or_other_columns():
    t = _table(THREE, ["rank_bm25", "rank_bienc", "rank_champion"])
    want = mine(t, MiningConfig(top=3)).set_index("product_id")["level"]
    shuffled = t.sample(frac=1, random_state=0).assign(grade=3, score_bm25=0.5)  # a label column changes nothing
    got = mine(shuffled, MiningConfig(top=3)).set_index("product_id")["level"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index())


def test_an_extra_retriever_votes_like_the_bi_encoder():
    t = _table([((1, N, 2), "x"), ((N, N, 1), "x"), ((1, 1, 1), "x"), ((N, 9, N), "x")],
               ["rank_bm25", "rank_bienc", "rank_twotower"])
    assert mine(t, MiningConfig(top=3))["level"].tolist() == ["medium", "hard_negative", "easy_positive",
                                                              "easy_negative"]


@pytest.mark.parametrize("change, needle", [
    (lambda t: t.drop(columns=["rank_bienc"]), "lacks column(s) ['rank_bienc']"),
    (lambda t: t.assign(rank_bm25=0.0), "1-based ranks"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "duplicate"),
    (lambda t: t.iloc[:0], "no rows"),
])
def test_mine_refuses_bad_tables(change, needle):
    with pytest.raises(RetrievalError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        mine(change(_table(TWO, ["rank_bm25", "rank_bienc"])))


# --- the budget ------------------------------------------------------------------------------------

def _mined(counts: dict[str, int], n_queries: int = 7) -> pd.DataFrame:
    rows = [{"query_id": f"q{i % n_queries}", "product_id": f"{lvl}-{i}", "level": lvl}
            for lvl, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


COUNTS = {"easy_positive": 40, "easy_negative": 60, "medium": 35, "hard_positive": 12, "hard_negative": 50}


@pytest.mark.parametrize("budget", [1, 2, 7, 50, 100, 151, 197])
def test_allocation_sums_exactly_to_the_budget(budget):
    m = _mined(COUNTS)
    sel = allocate_budget(m, budget, seed=3)
    assert len(sel) == budget and sel.attrs["shortfall"] == 0
    assert sum(sel.attrs["allocation"].values()) == budget
    assert sel["level"].value_counts().reindex(LEVELS, fill_value=0).to_dict() == sel.attrs["allocation"]
    assert not sel.duplicated(["query_id", "product_id"]).any()
    assert set(map(tuple, sel[["query_id", "product_id"]].to_numpy())) <= set(map(tuple, m[["query_id",
                                                                                            "product_id"]].to_numpy()))


def test_quotas_follow_the_weights_and_pass_on_what_a_level_lacks():
    eq = {lvl: 1000 for lvl in LEVELS}
    q = quotas(eq, 100, DEFAULT_WEIGHTS)                             # nothing capped: exactly proportional
    assert q == {"easy_positive": 10, "easy_negative": 10, "medium": 20, "hard_positive": 30, "hard_negative": 30}
    assert max(q, key=q.get) in ("hard_positive", "hard_negative")   # the default favours the hard levels
    q = quotas({**eq, "hard_positive": 4}, 100, DEFAULT_WEIGHTS)    # 30 asked, 4 there: the rest shared out
    assert q["hard_positive"] == 4 and sum(q.values()) == 100
    assert q["hard_negative"] == pytest.approx(96 * 0.3 / 0.7, abs=1)
    q = quotas(eq, 7, {"hard_negative": 1.0, "medium": 1.0})          # unnamed levels get nothing
    assert q["medium"] + q["hard_negative"] == 7 and q["easy_positive"] == q["easy_negative"] == 0


def test_more_budget_than_pairs_takes_them_all_and_says_so():
    m = _mined({"medium": 5, "hard_negative": 3, "easy_negative": 40})
    sel = allocate_budget(m, 20, weights={"medium": 1, "hard_negative": 1})
    assert len(sel) == 8 and sel.attrs["shortfall"] == 12 and set(sel["level"]) == {"medium", "hard_negative"}


def test_allocation_is_seeded_and_visits_every_query():
    m = _mined(COUNTS, n_queries=7)
    a, b = allocate_budget(m, 60, seed=1), allocate_budget(m.sample(frac=1, random_state=5), 60, seed=1)
    pd.testing.assert_frame_equal(a, b)                               # same rows whatever the input order
    assert not allocate_budget(m, 60, seed=2)[["product_id"]].equals(a[["product_id"]])
    hn = a[a["level"] == "hard_negative"]                             # 18 of 50 over 7 queries: round robin
    assert hn["query_id"].nunique() == 7 and hn["query_id"].value_counts().max() <= 3


@pytest.mark.parametrize("budget, weights, needle", [
    (0, None, "budget must be"), (-4, None, "budget must be"), (2.5, None, "budget must be"),
    (True, None, "budget must be"), (5, {"hardest": 1.0}, "unknown level(s) ['hardest']"),
    (5, {"medium": -1.0}, "must be finite and >= 0"), (5, {"medium": 0.0}, "every weight is 0"),
])
def test_allocation_refuses_bad_input(budget, weights, needle):
    with pytest.raises(RetrievalError) as e:
        allocate_budget(_mined(COUNTS), budget, weights)
    assert needle in str(e.value) and "Fix:" in str(e.value)


# --- `ltr mine` ------------------------------------------------------------------------------------

def _one_line_exit_2(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.fixture()
def retrieved_file(tmp_path) -> Path:
    t = _table(TWO * 3, ["rank_bm25", "rank_bienc"])
    t["query_id"] = [f"q{i % 3}" for i in range(len(t))]
    t["product_id"] = [f"P{i:03d}" for i in range(len(t))]
    p = tmp_path / "retrieved.parquet"
    write_table(t, p, "retrieved")
    return p


def test_ltr_mine_help():
    res = runner.invoke(app, ["mine", "--help"])
    assert res.exit_code == 0 and "--budget" in res.output and "--weight" in res.output


@pytest.mark.parametrize("args, needle", [
    (["--budget", "0"], "mining.budget"), (["--budget", "-5"], "mining.budget"),
    (["--weight", "hardest=1"], "unknown level(s) ['hardest']"), (["--weight", "medium=lots"], "LEVEL=NUMBER"),
    (["--weight", "medium=0"], "every weight is 0"), (["--top", "0"], "mining.top"),
    (["--dataset-out", "DS"], "--dataset-out needs --dataset"),
])
def test_ltr_mine_bad_options(retrieved_file, tmp_path, args, needle):
    out = tmp_path / "mined.parquet"
    args = [str(tmp_path / "ds_out") if a == "DS" else a for a in args]
    _one_line_exit_2(runner.invoke(app, ["mine", "--retrieved", str(retrieved_file), "--out", str(out), *args]),
                     needle)
    assert not out.exists() and not (tmp_path / "ds_out").exists()


def test_ltr_mine_bad_tables(retrieved_file, tmp_path):
    out = tmp_path / "mined.parquet"
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(retrieved_file).drop(columns=["rank_bienc"]).to_parquet(bad)
    _one_line_exit_2(runner.invoke(app, ["mine", "--retrieved", str(bad), "--out", str(out)]),
                     "missing required column(s) 'rank_bienc'")
    _one_line_exit_2(runner.invoke(app, ["mine", "--retrieved", str(tmp_path / "none.parquet"), "--out", str(out)]),
                     "file not found")
    assert not out.exists()


def test_ltr_mine_writes_levels_and_the_chosen_pairs(retrieved_file, tmp_path):
    out = tmp_path / "mined.parquet"
    res = runner.invoke(app, ["mine", "--retrieved", str(retrieved_file), "--out", str(out), "--budget", "11",
                              "--top", "3", "--weight", "hard_negative=2", "--weight", "easy_positive=1"])
    assert res.exit_code == 0, res.output
    m = pd.read_parquet(out)
    assert m["level"].tolist() == [lvl for _, lvl in TWO * 3]
    assert m["selected"].sum() == 11 and set(m.loc[m["selected"], "level"]) == {"hard_negative", "easy_positive"}


# --- a catalog without candidate lists, end to end ---------------------------------------------------

def _cascade(srv, cache: Path) -> dict:
    """Cheap tier first, uncertain pairs escalate to the second, under a dollar cap (the test server speaks
    the OpenAI wire protocol; its grades are a deterministic hash, which is all a flow test needs)."""
    tier = {"base_url": srv.base_url, "api_key": "k", "concurrency": 4, "timeout_s": 10, "backoff_base_s": 0.01}
    return {"backend": "cascade", "cache_path": str(cache), "calibrate": False, "max_dollars": 5.0,
            "cascade": {"tiers": [{"backend": "openai", "openai": {**tier, "model": "gpt-4o-mini"},
                                   "escalate_if_margin_below": 0.5},
                                  {"backend": "openai", "openai": {**tier, "model": "gpt-4o"}}]}}


def test_catalog_without_candidates_runs_end_to_end(tmp_path):
    """products + queries only -> retrieve + mine -> simulated logs -> cascade labels (level on every label)
    -> Feast features -> training frame -> a trained, evaluated ranker. The bi-encoder is a tiny random BERT
    (the smallest real model that exercises the code); every other part is the real one."""
    from ltr.pipeline import (
        RunPaths,
        engagement_cutoff,
        stage_dataset,
        stage_features,
        stage_labels,
        stage_training_frame,
    )
    from ltr.run_config import RunConfig
    from ltr.serving.demo import save_encoder
    from ltr.sim.world import WorldConfig, generate_world
    from ltr.train import train_and_evaluate

    generate_world(tmp_path / "world", seed=4, progress=False,
                   cfg=WorldConfig(n_products=100, n_queries=12, n_candidates=8, sessions=300, days=14))
    shop = tmp_path / "shop"                                          # a catalog and a query log, nothing else
    shop.mkdir()
    for t in ("products", "queries"):
        shutil.copy(tmp_path / "world" / f"{t}.parquet", shop / f"{t}.parquet")
    before = {p.name: p.read_bytes() for p in shop.iterdir()}
    assert not Dataset.load(shop).brings_candidates and Dataset.load(shop).judgments.empty
    with OpenAIServer() as srv:
        cfg = RunConfig.model_validate({
            "seed": 2, "dataset": {"source": "dir", "path": str(shop)},
            "labels": _cascade(srv, tmp_path / "cache.sqlite"),
            "retrieval": {"k": 15, "bienc_path": str(save_encoder(tmp_path / "tiny"))},
            "mining": {"budget_per_query": 10},
            "features": {"families": ["lexical", "product", "engagement", "labels"]},
            "train": {"features": ["lexical", "product", "engagement"], "test_fraction": 0.34}})
        paths = RunPaths(tmp_path / "run")
        ds_dir = stage_dataset(cfg, paths)
        label_summary = stage_labels(cfg, paths, ds_dir)
    ds = Dataset.load(ds_dir)
    assert {p.name: p.read_bytes() for p in shop.iterdir()} == before  # the source was never written to
    assert len(ds.candidates) == 120 and ds.candidates["level"].isin(LEVELS).all()
    assert ds.candidates.groupby("query_id").size().min() >= 3       # the budget reached every query
    assert ds.engagement_simulated and ds.metadata["candidates"]["selected"] == 120
    labels = pd.read_parquet(paths.labels)
    assert len(labels) == 120 and labels["backend"].str.startswith("cascade/").all()
    both = labels.merge(ds.candidates, on=["query_id", "product_id"], suffixes=("", "_cand"))
    assert len(both) == 120 and (both["level"] == both["level_cand"]).all()   # provenance on every label
    assert sum(label_summary["labels_per_level"].values()) == 120
    assert stage_dataset(cfg, paths) == ds_dir                        # re-run: mining is up to date
    store = stage_features(cfg, paths, ds_dir, pd.DataFrame({"query_id": [], "product_id": []}))
    frame = stage_training_frame(cfg, paths, ds, store, engagement_cutoff(ds.impressions, 7))
    assert len(frame) == 120 and frame["grade"].notna().all()       # graded by the labeler: no human grade here
    res = train_and_evaluate(frame, cfg.train.model_copy(update={"seed": 2}))
    assert res.metrics["n_queries"] >= 3 and 0 <= res.metrics["ndcg@10"] <= 1
