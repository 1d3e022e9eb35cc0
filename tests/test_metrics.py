"""ltr.data.metrics against hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from ltr.data import metrics as M
from ltr.data.esci import esci_sample_dir
from ltr.train_config import FrameColumns

L2_3 = math.log2(3)


def test_ndcg_esci_gains_hand_computed():
    # ranked: a (I, gain 0), b (E, gain 1), c (S, gain 0.1)
    v = M.ndcg_per_query(["q"] * 3, [3.0, 2.0, 1.0], [0, 3, 2], k=10, gains="esci", tiebreak=["a", "b", "c"])
    dcg = 0 + 1 / L2_3 + 0.1 / 2
    idcg = 1 + 0.1 / L2_3
    assert v.iloc[0] == pytest.approx(dcg / idcg, abs=1e-12)
    assert v.iloc[0] == pytest.approx(0.6405168, abs=1e-6)


def test_ndcg_exponential_gains_and_cutoff():
    qid, s, g = ["q"] * 3, [3.0, 2.0, 1.0], [0, 3, 2]
    v = M.ndcg_per_query(qid, s, g, k=10, gains="exp").iloc[0]
    assert v == pytest.approx((7 / L2_3 + 3 / 2) / (7 + 3 / L2_3), abs=1e-12)
    assert M.ndcg_per_query(qid, s, g, k=1, gains="exp").iloc[0] == 0.0          # top-1 is irrelevant
    assert M.ndcg_per_query(qid, [1, 3, 2], g, k=2).iloc[0] == pytest.approx(1.0)  # perfect top-2


def test_ties_break_by_product_id_not_by_label():
    # constant scores: order is product id a < b < c whatever the row order or the labels
    f = pd.DataFrame({"qid": ["q"] * 3, "pid": ["c", "a", "b"], "g": [3, 0, 2]})
    v1 = M.ndcg_per_query(f.qid, np.zeros(3), f.g, tiebreak=f.pid).iloc[0]
    r = f.iloc[::-1]
    v2 = M.ndcg_per_query(r.qid, np.zeros(3), r.g, tiebreak=r.pid).iloc[0]
    expected = (0 + 0.1 / L2_3 + 1 / 2) / (1 + 0.1 / L2_3)   # a(0), b(2), c(3)
    assert v1 == pytest.approx(expected, abs=1e-12) and v2 == pytest.approx(expected, abs=1e-12)
    assert list(M.ranks(f.qid, np.zeros(3), f.pid)) == [3, 1, 2]


def test_queries_without_relevant_items_are_left_out():
    qid = ["q1", "q1", "q2", "q2"]
    v = M.ndcg_per_query(qid, [1, 0, 1, 0], [0, 3, 0, 0])
    assert np.isnan(v.loc["q2"]) and v.loc["q1"] == pytest.approx(1 / L2_3)
    pq = pd.DataFrame({"ndcg@10": v})
    assert M.summarize(pq)["ndcg@10"] == pytest.approx(1 / L2_3)


def test_irrelevant_share_top_k():
    qid = ["q"] * 4
    v = M.irrelevant_per_query(qid, [4, 3, 2, 1], [0, np.nan, 0, 3], k=3)
    assert v.iloc[0] == pytest.approx(1.0)       # judged in top 3: two grade-0 items
    v = M.irrelevant_per_query(qid, [4, 3, 2, 1], [0, 1, 2, 3], k=2)
    assert v.iloc[0] == pytest.approx(0.5)


def test_recall_hit_rate_and_expected_clicks():
    qid, s = ["q"] * 3, [3.0, 2.0, 1.0]
    assert M.recall_per_query(qid, s, [1, 0, 3], k=2).iloc[0] == pytest.approx(0.25)
    assert M.recall_per_query(qid, s, [1, 0, 3], k=3).iloc[0] == pytest.approx(1.0)
    assert np.isnan(M.recall_per_query(qid, s, [0, 0, 0], k=2).iloc[0])
    assert M.hit_rate_per_query(qid, s, [0, 0, 2], k=2).iloc[0] == 0.0
    assert M.hit_rate_per_query(qid, s, [0, 0, 2], k=3).iloc[0] == 1.0
    ec = M.expected_clicks_per_query(qid, s, [0.5, 0.2, 0.9], k=2, eta=1.0).iloc[0]
    assert ec == pytest.approx(0.5 + 0.2 / 2)
    ec2 = M.expected_clicks_per_query(qid, s, [0.5, 0.2, 0.9], k=3, eta=2.0).iloc[0]
    assert ec2 == pytest.approx(0.5 + 0.2 / 4 + 0.9 / 9)


def test_per_query_and_segments():
    f = pd.DataFrame({
        "query_id": ["h", "h", "t", "t"], "product_id": ["a", "b", "c", "d"], "grade": [3, 0, 0, 3],
        "segment": ["head", "head", "tail", "tail"], "heldout_carts": [0, 2, 1, 0],
        "heldout_purchases": [1, 0, 0, 0], "click_propensity": [0.4, 0.2, 0.1, 0.3]})
    s = np.array([2.0, 1.0, 2.0, 1.0])
    out = M.evaluate(f, s, FrameColumns(), k=1, metrics=("cart_recall@1", "purchase_recall@1",
                                                          "expected_clicks@2", "atc_rate@1"))
    assert out["ndcg@1"] == pytest.approx(0.5) and out["ndcg@1/head"] == 1.0 and out["ndcg@1/tail"] == 0.0
    assert out["irrelevant@1"] == pytest.approx(0.5)
    assert out["cart_recall@1"] == pytest.approx(0.5)             # head 0/2, tail 1/1
    assert out["purchase_recall@1"] == pytest.approx(1.0)         # only the head query has purchases
    assert out["expected_clicks@2"] == pytest.approx(((0.4 + 0.1) + (0.1 + 0.15)) / 2)
    assert out["atc_rate@1/tail"] == 1.0 and out["atc_rate@1/head"] == 0.0
    assert out["n_queries"] == 2


def test_segments_derived_from_volume_when_absent():
    f = pd.DataFrame({"query_id": ["a", "a", "b", "c"], "impressions": [500, 500, 3, 4]})
    seg = M.query_segments(f, FrameColumns(), head_quantile=0.5)
    assert seg.loc["a"] == "head" and seg.loc["b"] == "tail"


def test_bad_input_is_named():
    with pytest.raises(M.MetricError, match="score"):
        M.ndcg_per_query(["q", "q"], [1.0, np.nan], [1, 2])
    with pytest.raises(M.MetricError, match="grade"):
        M.ndcg_per_query(["q", "q"], [1.0, 2.0], [1, 7])
    with pytest.raises(M.MetricError, match="tiebreak"):
        M.ranks(["q", "q"], [1.0, 2.0], ["a"])
    with pytest.raises(M.MetricError, match="cut-off"):
        M.per_query_metrics(pd.DataFrame({"query_id": ["q"], "product_id": ["a"]}), [1.0], metrics=("cart_recall",))


def test_real_esci_sample_ordering():
    d = esci_sample_dir()
    if not (d / "judgments.parquet").exists():
        pytest.skip(f"ESCI sample not found at {d} (set LTR_ESCI_DIR)")
    j = pd.read_parquet(d / "judgments.parquet")
    q, g = j["query"].to_numpy(), j["grade"].to_numpy()
    perfect = M.ndcg_per_query(q, g.astype(float), g, 10, "esci", j["product_id"]).mean()
    worst = M.ndcg_per_query(q, -g.astype(float), g, 10, "esci", j["product_id"]).mean()
    rnd = M.ndcg_per_query(q, np.random.default_rng(0).random(len(j)), g, 10, "esci", j["product_id"]).mean()
    assert perfect == pytest.approx(1.0) and worst < rnd < perfect


# --- cross-checks against maintained libraries --------------------------------------------------------

def _random_queries(seed: int, n_queries: int = 12):
    """Tie-free random cases: continuous scores (no score ties), 2..25 judged items per query, some queries
    with nothing relevant (NaN here, 0 in the libraries: compared only where something is relevant)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 26, n_queries)
    qid = np.repeat([f"q{i:02d}" for i in range(n_queries)], sizes)
    grade = rng.choice(4, len(qid), p=[0.5, 0.2, 0.15, 0.15])
    grade[qid == "q00"] = 0
    pid = np.array([f"p{i:04d}" for i in range(len(qid))])
    return qid, rng.random(len(qid)), grade, pid


GAIN_OF = {"esci": lambda g: np.array([M.ESCI_GAINS[int(x)] for x in g]), "exp": lambda g: 2.0 ** g - 1}


@pytest.mark.parametrize("gains", ["esci", "exp"])
@pytest.mark.parametrize("k", [5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_matches_sklearn(gains, k, seed):
    from sklearn.metrics import ndcg_score

    qid, score, grade, pid = _random_queries(seed)
    ours = M.ndcg_per_query(qid, score, grade, k, gains, pid)
    gain = GAIN_OF[gains](grade)      # sklearn takes the gains themselves as y_true
    checked = 0
    for q in ours.index:
        m = qid == q
        if not gain[m].any():
            assert np.isnan(ours[q])      # sklearn would say 0: our rule leaves the query out
            continue
        ref = ndcg_score(gain[m][None, :], score[m][None, :], k=k)
        assert ours[q] == pytest.approx(ref, abs=1e-12), q
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("k", [5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_matches_ir_measures(k, seed):
    """ir-measures (trec_eval through pytrec_eval) uses the qrel level itself as the gain (linear), or a
    `gains={level: int gain}` mapping: ESCI gains x100 (NDCG is scale-free) and 2^g - 1 are both integers."""
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import Qrel, ScoredDoc, nDCG

    qid, score, grade, pid = _random_queries(seed)
    qrels = [Qrel(q, d, int(g)) for q, d, g in zip(qid, pid, grade)]
    run = [ScoredDoc(q, d, float(s)) for q, d, s in zip(qid, pid, score)]
    cases = {"linear": (nDCG @ k, {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}),
             "esci": (nDCG(cutoff=k, gains={g: round(100 * v) for g, v in M.ESCI_GAINS.items()}), "esci"),
             "exp": (nDCG(cutoff=k, gains={g: 2 ** g - 1 for g in range(4)}), "exp")}
    for name, (measure, gains) in cases.items():
        ref = {m.query_id: m.value for m in ir_measures.iter_calc([measure], qrels, run)}
        ours = M.ndcg_per_query(qid, score, grade, k, gains, pid)
        relevant = ours.dropna()
        assert len(relevant) >= 8 and np.isnan(ours["q00"]) and ref["q00"] == 0.0, name
        for q, v in relevant.items():
            assert v == pytest.approx(ref[q], abs=1e-12), (name, q)


def test_estimate_propensity_is_the_clipped_smoothed_rate():
    from ltr.data.engagement import smoothed_rate

    rng = np.random.default_rng(3)
    imp = rng.integers(0, 50, 500).astype(float)
    clk = rng.binomial(imp.astype(int), 0.2).astype(float)
    clk[:5] = imp[:5] + 30                                # a dirty log: more clicks than impressions
    imp[5], clk[6] = np.nan, np.nan                      # missing counts count as 0
    got = M.estimate_propensity(clk, imp, smoothing=20.0)
    c, n = np.nan_to_num(clk), np.nan_to_num(imp)
    assert np.array_equal(got, np.clip(smoothed_rate(c, n, 20.0), 0.0, 1.0))
    prior = c.sum() / n.sum()
    assert np.array_equal(got, np.clip((c + 20.0 * prior) / (n + 20.0), 0.0, 1.0))   # bit-identical
    assert got.max() == 1.0 and got.min() >= 0.0
    assert np.array_equal(M.estimate_propensity([0.0, 0.0], [0.0, 0.0], smoothing=0.0), [0.0, 0.0])


# --- paired tests and strict JSON ---------------------------------------------------------------------

def test_paired_test_detects_a_clearly_better_ranker():
    rng = np.random.default_rng(0)
    base = pd.Series(rng.uniform(0.2, 0.8, 60), index=[f"q{i}" for i in range(60)])
    better = (base + rng.uniform(0.05, 0.15, 60)).clip(upper=1.0)
    t = M.paired_test(better, base)
    assert t["n_queries"] == 60 and t["mean_diff"] > 0.05
    assert t["p_ttest"] < 1e-6 and t["p_wilcoxon"] < 1e-6
    noisy = base + rng.normal(0, 0.1, 60)                 # no systematic difference
    assert M.paired_test(noisy, base)["p_ttest"] > 0.01


def test_paired_test_identical_missing_and_too_few():
    base = pd.Series([0.5, 0.7, np.nan, 0.1], index=list("abcd"))
    same = M.paired_test(base.copy(), base)
    assert same == {"n_queries": 3, "mean_diff": 0.0, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    other = pd.Series([0.9, 0.8, 0.3], index=list("bcx"))   # pairs only where both are defined: b
    few = M.paired_test(other, base)
    assert few["n_queries"] == 1 and np.isnan(few["p_ttest"]) and np.isnan(few["p_wilcoxon"])
    assert M.nan_to_none({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"}) == {"a": [1.0, None], "b": None,
                                                                                      "c": "x"}
