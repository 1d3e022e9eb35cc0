"""The held-out cross-encoder benchmark's own arithmetic: the paired comparison and the extra-labels guard."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.bench_ce_quality import load_extra_labels, paired_comparison


def _judg(n_q: int = 40, n_d: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"query_id": np.repeat([f"q{i}" for i in range(n_q)], n_d),
                         "product_id": [f"p{i}" for i in range(n_q * n_d)],
                         "grade": rng.integers(0, 4, n_q * n_d)})


def test_paired_comparison_sees_a_real_gap_and_no_gap():
    j = _judg()
    rng = np.random.default_rng(1)
    noise = rng.random(len(j))
    good = j["grade"].to_numpy() + 0.5 * rng.random(len(j))  # nearly the ideal order
    better = paired_comparison(j, good, noise)
    assert better["mean_diff"] > 0.1 and better["ci95"][0] > 0 and better["p_boot_le_0"] == 0.0
    assert better["wins"] > better["losses"] and better["n_queries"] == 40
    same = paired_comparison(j, noise, noise)
    assert same["mean_diff"] == 0.0 and same["ties"] == 40 and same["ci95"] == [0.0, 0.0]


def test_extra_labels_must_not_share_ids_with_the_esci_sample(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "dataset").mkdir()
    pd.DataFrame({"query_id": ["q0"], "product_id": ["x1"], "score": [0.5]}).to_parquet(
        tmp_path / "labels" / "labels.parquet")
    pd.DataFrame({"product_id": ["x1"], "title": ["t"], "brand": ["b"]}).to_parquet(
        tmp_path / "dataset" / "products.parquet")
    pd.DataFrame({"query_id": ["q0"], "query": ["q"]}).to_parquet(tmp_path / "dataset" / "queries.parquet")
    esci_products = pd.DataFrame({"product_id": ["p1"], "title": ["t"], "brand": ["b"], "is_book": [False]})
    lab, prods, qs = load_extra_labels(tmp_path, _judg(2, 1).assign(query_id=["a", "b"]), esci_products)
    assert len(lab) == 1 and list(prods.columns) == ["product_id", "title", "brand"] and len(qs) == 1
    with pytest.raises(SystemExit, match="shares 1 query"):
        load_extra_labels(tmp_path, _judg(2, 1), esci_products)  # query q0 is in both
    with pytest.raises(SystemExit, match="not found"):
        load_extra_labels(tmp_path / "nope", _judg(2, 1), esci_products)
