"""Lexical features on hand-made cases: every expected value below is worked out by hand."""
import math

import pandas as pd
import pytest

from features.lexical import (
    LEXICAL_FEATURES,
    attribute_match,
    lexical_features,
    number_units,
    product_type,
    tokenize,
)


@pytest.fixture(scope="module")
def frames():
    products = pd.DataFrame({
        "product_id": ["a", "b", "c", "d"],
        "title": ["Hydro Flask 32 oz Wide Mouth Water Bottle, Black", "Nike Revolution Running Shoes Red",
                  "Stanley 16oz Tumbler", "Plain mug"],
        "bullet_points": ["keeps cold 24 hours", None, "stainless steel", None],
        "description": [None, "lightweight running shoe", "a cup", None],
        "brand": ["Hydro Flask", "Nike", "Stanley", None],
        "color": ["Black", "Red", "Blue", None],
        "category": ["Kitchen > Drinkware > Water Bottles", "Shoes > Running Shoes", "Kitchen > Tumblers", None],
    })
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["hydro flask 32oz black water bottle",
                                                                  "red nike shoes"]})
    pairs = pd.DataFrame({"query_id": ["q1", "q1", "q1", "q2", "q2", "q1"],
                          "product_id": ["a", "b", "c", "b", "a", "d"]})
    return pairs, queries, products


def test_tokenize_splits_numbers_from_units():
    assert tokenize("Hydro Flask 32oz, 10-inch") == ["hydro", "flask", "32", "oz", "10", "inch"]
    assert tokenize(None) == [] and tokenize(float("nan")) == []


def test_number_units_normalise_spellings():
    assert number_units('32 fl oz bottle, 10" pan, 2-pack, 1.5 lbs') == {
        (32.0, "oz"), (10.0, "inch"), (2.0, "pack"), (1.5, "lb")}
    assert number_units("10 inch") == number_units("10in") == {(10.0, "inch")}
    assert number_units("model 3000") == set()  # a bare number is not a measurement


def test_attribute_match_exact_partial_and_unknown():
    q = tokenize("hydro flask water bottles")
    assert attribute_match(q, "Hydro Flask") == (1.0, 1.0)
    assert attribute_match(q, "Hydro Peak") == (0.0, 0.5)
    assert attribute_match(q, "Water Bottle") == (1.0, 1.0)  # plural folding
    e, p = attribute_match(q, None)
    assert math.isnan(e) and math.isnan(p)
    assert product_type("Kitchen > Drinkware > Water Bottles") == "Water Bottles"


def test_lexical_features_hand_made(frames):
    out = lexical_features(*frames, progress=False).set_index(["query_id", "product_id"])
    assert list(out.columns) == list(LEXICAL_FEATURES)
    a, b, c, d = (out.loc[("q1", x)] for x in "abcd")
    # brand / color / type / number with unit all match for product a
    assert (a.lex_brand_exact, a.lex_color_exact, a.lex_type_exact, a.lex_num_match) == (1.0, 1.0, 1.0, 1.0)
    assert a.lex_num_conflict == 0.0 and a.lex_cov_title == 1.0
    # c: 16 oz where 32 oz was asked -> a number conflict, no number match
    assert (c.lex_num_match, c.lex_num_conflict) == (0.0, 1.0)
    # b states no ounces at all: no match, and no conflict either
    assert (b.lex_num_match, b.lex_num_conflict) == (0.0, 0.0)
    # BM25 on the title ranks the matching product first; a product with no bullets has NaN bullets BM25
    assert a.lex_bm25_title > c.lex_bm25_title > b.lex_bm25_title == 0.0
    assert math.isnan(b.lex_bm25_bullets) and math.isnan(a.lex_bm25_desc)
    # d has no brand/color/category: unknown, not 0
    assert math.isnan(d.lex_brand_exact) and math.isnan(d.lex_color_partial) and math.isnan(d.lex_type_exact)
    q2b = out.loc[("q2", "b")]
    assert (q2b.lex_brand_exact, q2b.lex_color_exact, q2b.lex_type_exact, q2b.lex_type_partial) == (1, 1, 0, 0.5)
    assert math.isnan(q2b.lex_num_match)  # the query asks for no measurement
    assert out.loc[("q2", "a")].lex_brand_exact == 0.0


def test_lexical_rejects_unknown_products(frames):
    pairs, queries, products = frames
    bad = pd.concat([pairs, pd.DataFrame({"query_id": ["q1"], "product_id": ["zzz"]})])
    with pytest.raises(ValueError, match="product_id.*not in products"):
        lexical_features(bad, queries, products, progress=False)
    with pytest.raises(ValueError, match="lacks column"):
        lexical_features(pairs.rename(columns={"query_id": "qid"}), queries, products, progress=False)
