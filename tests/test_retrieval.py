"""Retrieval over the whole catalog (ltr/retrieval/): rank metadata on a small hand-made catalog whose
answer is known (BM25 by construction, the bi-encoder by brute-force cosine over every pair), levels of
real retrieval, the champion as re-ranker of the union, a catalog without candidate lists, and
`ltr retrieve` with bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ltr.cli import app
from ltr.data.dataset import Dataset, DatasetError, write_table
from ltr.data.schemas import query_id
from ltr.retrieval import MiningConfig, RetrievalConfig, RetrievalError, mine, retrieve

runner = CliRunner()
TITLES = ["Acme X200 replacement battery", "Red running shoes for women", "Lightweight sneakers for jogging",
          "Water bottle", "Stainless steel water bottle 32 oz insulated for hot and cold drinks",
          "iPhone 13 case, clear silicone", "Apple iPhone 13 smartphone 128 GB", "Wooden desk lamp with LED bulb",
          "Ceramic coffee mug 12 oz", "Yoga mat, non-slip, 6 mm"]
QUERIES = ["x200 battery", "running shoes", "water bottles", "iphone 13", "desk lamp"]
PRODUCTS = pd.DataFrame({"product_id": [f"P{i:02d}" for i in range(len(TITLES))], "title": TITLES})
QTABLE = pd.DataFrame({"query_id": [query_id(q) for q in QUERIES], "query": QUERIES})
K = 3


def _pairs(r: pd.DataFrame, query: str) -> pd.DataFrame:
    return r[r["query_id"] == query_id(query)].set_index("product_id")


@pytest.fixture(scope="module")
def retrieved() -> pd.DataFrame:
    return retrieve(PRODUCTS, QTABLE, RetrievalConfig(k=K))


def test_columns_and_ranks_are_one_based_without_gaps(retrieved):
    assert list(retrieved.columns) == ["query_id", "product_id", "rank_bm25", "rank_bienc", "score_bm25",
                                       "score_bienc"]
    assert not retrieved.duplicated(["query_id", "product_id"]).any()
    for _, g in retrieved.groupby("query_id"):
        assert sorted(g["rank_bienc"].dropna()) == [1, 2, 3]           # k = 3 of 10 products
        n = int(g["rank_bm25"].notna().sum())
        assert sorted(g["rank_bm25"].dropna()) == list(range(1, n + 1))
        assert (g.loc[g["rank_bm25"].isna(), "score_bm25"] == 0).all()  # not returned: no shared term


def test_bm25_ranks_are_the_known_answer(retrieved):
    x200 = _pairs(retrieved, "x200 battery")
    assert x200["rank_bm25"].dropna().to_dict() == {"P00": 1}           # the only product with those words
    bottles = _pairs(retrieved, "water bottles")                        # plural folded: "bottles" -> "bottle"
    assert bottles["rank_bm25"].dropna().to_dict() == {"P03": 1, "P04": 2}  # shorter document first
    shoes = _pairs(retrieved, "running shoes")
    assert shoes["rank_bm25"].dropna().to_dict() == {"P01": 1}
    assert np.isnan(shoes.loc["P02", "rank_bm25"])                      # "sneakers for jogging": no shared word


def test_bi_encoder_ranks_equal_brute_force_cosine(retrieved):
    """Exact top-k by matrix product = ranking every (query, product) cosine computed pair by pair."""
    from features.biencoder import default_biencoder
    from features.text import product_texts
    texts = product_texts(PRODUCTS)
    for q in QUERIES:
        cos = default_biencoder().cosine([q] * len(texts), texts)
        order = sorted(range(len(texts)), key=lambda i: (-cos[i], i))[:K]
        want = {PRODUCTS.product_id[i]: r + 1 for r, i in enumerate(order)}
        got = _pairs(retrieved, q)
        assert got["rank_bienc"].dropna().astype(int).to_dict() == want
        assert np.allclose(got["score_bienc"], [cos[PRODUCTS.index[PRODUCTS.product_id == p][0]] for p in got.index],
                           atol=1e-5)
        bm_found = set(got.index[got["rank_bm25"].notna()])
        assert set(got.index) == set(want) | bm_found                    # the union, nothing else


def test_levels_of_real_retrieval(retrieved):
    m = mine(retrieved, MiningConfig(top=2))
    lvl = {(q, p): v for q, p, v in zip(m["query_id"], m["product_id"], m["level"])}
    assert lvl[query_id("x200 battery"), "P00"] == "easy_positive"      # BM25 1 and bi-encoder 1
    assert lvl[query_id("running shoes"), "P01"] == "easy_positive"
    assert lvl[query_id("running shoes"), "P02"] == "hard_negative"     # only the embedding ranks it high
    m1 = mine(retrieved, MiningConfig(top=1))
    iph = m1[m1["query_id"] == query_id("iphone 13")].set_index("product_id")["level"]
    assert iph["P05"] == "hard_positive" and iph["P06"] == "hard_negative"  # BM25 1 vs bi-encoder 1 disagree


def test_k_beyond_the_catalog_returns_every_product():
    r = retrieve(PRODUCTS, QTABLE.iloc[:1], RetrievalConfig(k=50))
    assert len(r) == len(PRODUCTS) and sorted(r["rank_bienc"]) == list(range(1, len(PRODUCTS) + 1))


@pytest.mark.parametrize("products, queries, needle", [
    (PRODUCTS.iloc[:0], QTABLE, "products has no rows"),
    (PRODUCTS, QTABLE[["query_id"]], "missing required column(s) ['query']"),
    (PRODUCTS[["product_id"]], QTABLE, "missing required column(s) ['title']"),
    (pd.concat([PRODUCTS, PRODUCTS.iloc[:1]]), QTABLE, "duplicate key(s) on ['product_id']"),
])
def test_retrieve_refuses_bad_tables(products, queries, needle):
    with pytest.raises(ValueError) as e:
        retrieve(products, queries, RetrievalConfig(k=2))
    assert needle in str(e.value)


# --- the champion re-ranks the union --------------------------------------------------------------

def test_champion_reranks_the_union(tmp_path, retrieved):
    """A real XGBoost LambdaMART registered in a temp MLflow store; its rank of each union row must equal
    the rank of its predictions on features computed independently (lexical + product, offline code)."""
    from features.lexical import LEXICAL_FEATURES, lexical_features
    from features.product import PRODUCT_FEATURES, product_features
    from ltr import tracking as T
    from ltr.serving.demo import train_and_register
    feats = list(LEXICAL_FEATURES) + list(PRODUCT_FEATURES)
    pairs = pd.DataFrame([(q, p) for q in QTABLE["query_id"] for p in PRODUCTS["product_id"]],
                         columns=["query_id", "product_id"])

    def X(pr: pd.DataFrame) -> pd.DataFrame:
        lex = lexical_features(pr, QTABLE, PRODUCTS, progress=False)
        prod = product_features(PRODUCTS).set_index("product_id").loc[pr["product_id"]].reset_index(drop=True)
        return pd.concat([lex[list(LEXICAL_FEATURES)], prod[list(PRODUCT_FEATURES)]], axis=1)[feats]

    grades = X(pairs)["lex_cov_title"].fillna(0).mul(3).round().astype(int)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with T.using_tracking(uri, "retrieval-test", (tmp_path / "artifacts").as_uri()):
        model = train_and_register(X(pairs), grades, pairs["query_id"], "retrieval-champion", n_estimators=20)
        r = retrieve(PRODUCTS, QTABLE, RetrievalConfig(k=K, champion=model), tracking_uri=uri)
        scores = T.load_model(model).predict(X(r[["query_id", "product_id"]]), missing="nan")
    assert list(r.columns) == ["query_id", "product_id", "rank_bm25", "rank_bienc", "rank_champion", "score_bm25",
                               "score_bienc", "score_champion"]
    key = ["query_id", "product_id"]
    pd.testing.assert_frame_equal(r.sort_values(key)[retrieved.columns].reset_index(drop=True),
                                  retrieved.sort_values(key).reset_index(drop=True))  # same union, same ranks
    assert np.allclose(r["score_champion"], scores, atol=1e-6)
    want = (r.assign(s=scores).sort_values(["query_id", "s", "product_id"], ascending=[True, False, True])
            .groupby("query_id").cumcount() + 1)
    assert (r["rank_champion"] == want.reindex(r.index)).all()
    assert set(mine(r)["level"]) <= {"easy_positive", "medium", "hard_positive", "hard_negative", "easy_negative"}


# --- a catalog with no candidate lists, and `ltr retrieve` -------------------------------------------

@pytest.fixture()
def shop(tmp_path):
    """products + queries, nothing else: no judgments, no candidates."""
    d = tmp_path / "shop"
    write_table(PRODUCTS, d / "products.parquet", "products")
    write_table(QTABLE, d / "queries.parquet", "queries")
    return d


def test_a_catalog_with_a_query_log_is_a_dataset(shop, tmp_path):
    ds = Dataset.load(shop)
    assert ds.judgments.empty and not ds.brings_candidates and len(ds.queries) == len(QUERIES)
    (tmp_path / "bare").mkdir()
    write_table(PRODUCTS, tmp_path / "bare" / "products.parquet", "products")
    with pytest.raises(DatasetError, match="queries.parquet"):
        Dataset.load(tmp_path / "bare")                                  # neither judgments nor queries


def test_ltr_retrieve_writes_rank_metadata(shop, tmp_path, retrieved):
    out = tmp_path / "retrieved.parquet"
    res = runner.invoke(app, ["retrieve", "--dataset", str(shop), "--out", str(out), "--k", str(K)])
    assert res.exit_code == 0, res.output
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got, retrieved, check_exact=False, atol=1e-6)
    res = runner.invoke(app, ["mine", "--retrieved", str(out), "--out", str(tmp_path / "mined.parquet"),
                              "--budget", "6", "--dataset", str(shop), "--dataset-out", str(tmp_path / "mined_ds")])
    assert res.exit_code == 0, res.output
    ds = Dataset.load(tmp_path / "mined_ds")                             # ready for `ltr label --dataset`
    assert len(ds.candidates) == 6 and ds.candidates["level"].notna().all()
    assert ds.metadata["candidates"]["source"] == "ltr.retrieval" and not (shop / "candidates.parquet").exists()


def test_ltr_retrieve_help():
    res = runner.invoke(app, ["retrieve", "--help"])
    assert res.exit_code == 0 and "--k" in res.output and "--champion" in res.output


def _one_line_exit_2(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("case, args, needle", [
    ("k0", ["--k", "0"], "retrieval.k"),
    ("kneg", ["--k", "-3"], "retrieval.k"),
    ("no queries", [], "missing judgments.parquet"),
    ("queries without text", [], "missing required column(s) 'query'"),
    ("no store", ["--champion", "models:/x@champion", "--tracking-uri", "sqlite:///STORE"], "does not exist"),
])
def test_ltr_retrieve_bad_input(shop, tmp_path, case, args, needle):
    if case == "no queries":
        (shop / "queries.parquet").unlink()
    if case == "queries without text":
        QTABLE[["query_id"]].to_parquet(shop / "queries.parquet")
    args = [a.replace("STORE", str(tmp_path / "none.db")) for a in args]
    out = tmp_path / "r.parquet"
    _one_line_exit_2(runner.invoke(app, ["retrieve", "--dataset", str(shop), "--out", str(out), *args]), needle)
    assert not out.exists() and not (tmp_path / "none.db").exists()


def test_mining_a_dataset_refuses_to_replace_a_directory_it_did_not_write(shop, tmp_path, retrieved):
    from ltr.retrieval.commands import mine_file
    write_table(retrieved, tmp_path / "r.parquet", "retrieved")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(RetrievalError, match="was not written by `ltr mine`"):
        mine_file(tmp_path / "r.parquet", tmp_path / "m.parquet", MiningConfig(budget=4), dataset=shop,
                  dataset_out=tmp_path / "precious")
    with pytest.raises(RetrievalError, match="is the source dataset"):
        mine_file(tmp_path / "r.parquet", tmp_path / "m.parquet", MiningConfig(budget=4), dataset=shop,
                  dataset_out=shop)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me" and not (tmp_path / "m.parquet").exists()
