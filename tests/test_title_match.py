"""Title matches that forgive typos, cut and glued words: hand-worked cases on a five-title catalog."""
import math

import numpy as np
import pandas as pd
import pytest

from features.lexical import LEXICAL_FEATURES, lexical_features
from features.title_match import FUZZY_HIT, TITLE_MATCH, term_similarity

TITLES = ["American Standard Cadet 3 Elongated Toilet Bowl in White", "BEHR Premium DeckOver 1 gal. Wood Coating",
          "Toro Recycler 22 in. Gas Lawn Mower", "Cordless Drill Driver Kit", ""]


@pytest.fixture(scope="module")
def table():
    products = pd.DataFrame({"product_id": ["toilet", "deck", "mower", "drill", "blank"], "title": TITLES})
    queries = pd.DataFrame({"query_id": ["typo", "glued", "cut", "one"],
                            "query": ["elongated toliet bowl", "deck over", "gas mowe", "drill"]})
    pairs = pd.DataFrame({"query_id": ["typo", "typo", "glued", "glued", "cut", "cut", "one", "one", "one"],
                          "product_id": ["toilet", "drill", "deck", "mower", "mower", "deck", "drill", "toilet",
                                         "blank"]})
    out = lexical_features(pairs, queries, products, progress=False)
    return out.set_index(["query_id", "product_id"])


def test_declared_once_in_the_lexical_view():
    assert list(LEXICAL_FEATURES[-len(TITLE_MATCH):]) == [f"lex_{n}" for n in TITLE_MATCH]


def test_term_similarity_exact_prefix_and_typo():
    assert term_similarity("drill", "drill") == 1.0
    assert term_similarity("mowe", "mower") == 0.9 == term_similarity("mower", "mowe")
    # "#toliet#" and "#toilet#" share 2 ("#to", "et#") of their 10 distinct trigrams
    assert term_similarity("toliet", "toilet") == pytest.approx(2 / 10)
    assert term_similarity("ab", "abc") < 1  # a prefix shorter than three letters is not a cut word
    assert term_similarity("drill", "bowl") == 0.0


def test_a_typo_still_covers_the_query_where_exact_coverage_cannot(table):
    good, other = table.loc[("typo", "toilet")], table.loc[("typo", "drill")]
    assert good.lex_cov_title == pytest.approx(2 / 3)  # "toliet" is not in the title
    assert good.lex_fuzzy_sim == pytest.approx((1 + 0.2 + 1) / 3)
    assert good.lex_fuzzy_cov == pytest.approx(2 / 3) and good.lex_fuzzy_min == pytest.approx(0.2)
    assert good.lex_head_sim == 1.0  # "bowl"
    assert good.lex_bigram == 0.0  # neither ("elongated", "toliet") nor ("toliet", "bowl") is in the title
    assert good.lex_char_cos > 0.3 > other.lex_char_cos
    assert other.lex_fuzzy_sim < FUZZY_HIT and other.lex_idf_cov == 0.0


def test_glued_and_cut_words(table):
    assert table.loc[("glued", "deck")].lex_glued == 1.0 and table.loc[("glued", "mower")].lex_glued == 0.0
    cut = table.loc[("cut", "mower")]
    assert cut.lex_fuzzy_sim == pytest.approx((1 + 0.9) / 2) and cut.lex_head_sim == 0.9
    assert cut.lex_fuzzy_cov == 1.0 and cut.lex_idf_cov < 1.0  # "mowe" is not a title word
    assert table.loc[("cut", "deck")].lex_char_cos < cut.lex_char_cos


def test_undefined_values_are_nan(table):
    assert math.isnan(table.loc[("one", "drill")].lex_bigram)  # a one-term query has no bigram
    blank = table.loc[("one", "blank")]
    assert all(math.isnan(blank[f"lex_{n}"]) for n in TITLE_MATCH)
    vals = table[[f"lex_{n}" for n in TITLE_MATCH]].to_numpy()
    assert np.nanmin(vals) >= 0 and np.nanmax(vals) <= 1 + 1e-6


def test_the_vocabulary_arithmetic_equals_the_pairwise_rule():
    """TitleMatcher scores a term against the whole vocabulary at once; it must agree with term_similarity
    word by word, typos, prefixes both ways and the exact word included."""
    from features.lexical import _folded_tokens, content_terms
    from features.title_match import TitleMatcher

    titles = TITLES + ["Toilets and Toilet Seats", "Mowers, Mow Blades"]
    m = TitleMatcher(titles, [_folded_tokens(t) for t in titles], _folded_tokens, content_terms)
    for term in ("toliet", "toilet", "mow", "mowe", "mowers", "bowl", "zz", "deckover", "cordles"):
        sims = m.vocab_similarity(term)
        assert sims.tolist() == [term_similarity(term, u) for u in m.vocab], term
