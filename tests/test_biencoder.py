"""Bi-encoder cosine: matches sentence-transformers, caches, and builds the feature table."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from features.biencoder import BiEncoder, bi_encoder_cosine, score_pairs
from features.text import pair_texts, product_text

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def enc() -> BiEncoder:
    return BiEncoder(max_length=64)


PRODUCTS = pd.DataFrame({
    "product_id": ["p1", "p2", "p3"],
    "title": ["Red running shoes for men", "Stainless steel kitchen knife set", "Paper towels, 12 rolls"],
    "description": ["Lightweight trainers.", None, "Absorbent kitchen towels " * 40],
    "bullet_points": [None, "Sharp\nDishwasher safe", ""],
    "brand": ["Acme", "ChefCo", np.nan],
    "color": ["Red", None, "White"],
    "category": ["Shoes > Running", "Kitchen > Knives", "Household > Paper"],
})
QUERIES = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["running shoes", "kitchen towels"]})


def test_product_text_order_skips_empty_and_truncates():
    t = product_text(PRODUCTS.iloc[2], max_description_chars=30)
    assert t.startswith("Paper towels, 12 rolls | Color: White | Category: Household > Paper | ")
    assert "Brand" not in t  # NaN brand skipped
    assert len(t.split(" | ")[-1]) <= 30
    with pytest.raises(ValueError, match="unknown product text field"):
        product_text(PRODUCTS.iloc[0], fields=("title", "price"))


def test_matches_sentence_transformers(enc):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(enc.path), device="cpu")
    st.max_seq_length = 64
    texts = ["running shoes", product_text(PRODUCTS.iloc[0]), product_text(PRODUCTS.iloc[2])]
    ref = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = enc.encode(texts)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_cosine_ranks_relevant_higher_and_caches(enc):
    qs = ["running shoes", "running shoes", "kitchen towels", "kitchen towels"]
    ts = [product_text(PRODUCTS.iloc[i]) for i in (0, 1, 2, 1)]
    s = bi_encoder_cosine(qs, ts, encoder=enc)
    assert s.shape == (4,) and s.dtype == np.float32
    assert s[0] > s[1] and s[2] > s[3]
    n = enc.n_cached
    s2 = bi_encoder_cosine(qs[::-1], ts[::-1], encoder=enc)
    assert enc.n_cached == n  # nothing re-encoded
    np.testing.assert_allclose(s2[::-1], s, atol=1e-6)


def test_score_pairs_table_and_errors(enc):
    pairs = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "product_id": ["p1", "p2", "p3"]})
    out = score_pairs(pairs, PRODUCTS, QUERIES, encoder=enc)
    assert list(out.columns) == ["query_id", "product_id", "bienc_cos"]
    assert out["bienc_cos"].between(-1, 1).all() and out.loc[0, "bienc_cos"] > out.loc[1, "bienc_cos"]
    with pytest.raises(KeyError, match="product_id"):
        score_pairs(pairs.assign(product_id=["p1", "zz", "p3"]), PRODUCTS, QUERIES, encoder=enc)
    with pytest.raises(KeyError, match="query_id"):
        pair_texts(pairs.assign(query_id=["q9", "q1", "q2"]), PRODUCTS, QUERIES)
    with pytest.raises(ValueError, match="same length"):
        enc.cosine(["a"], ["b", "c"])


def test_onnx_query_encoder_matches_torch_and_is_made_once(enc, tmp_path):
    """The service's query path (features/query_encoder.py): ONNX Runtime embeds queries as torch does."""
    from features.query_encoder import export_query_encoder, query_encoder_file

    assert enc.with_onnx_queries(tmp_path) is None and enc.with_onnx_queries(None) is None   # nothing exported
    path = export_query_encoder(enc, tmp_path)
    assert path == query_encoder_file(tmp_path, enc.path, enc.max_length) and path.exists()
    made = path.stat().st_mtime_ns
    assert export_query_encoder(enc, tmp_path) == path and path.stat().st_mtime_ns == made   # found, not redone
    assert export_query_encoder(enc, None) is None
    fast = enc.with_onnx_queries(tmp_path)
    assert fast.query_encoder is not None and enc.query_encoder is None    # a copy; the offline encoder unchanged
    qs = ["running shoes", "kitchen towels", "running shoes", "a 32 oz stainless steel water bottle for kids"]
    ts = [product_text(PRODUCTS.iloc[i]) for i in (0, 2, 1, 1)]
    np.testing.assert_allclose(fast.cosine(qs, ts), enc.cosine(qs, ts), atol=1e-5)
    q_onnx = fast.query_encoder.embed(qs)
    np.testing.assert_allclose(q_onnx, enc.encoder.embed(qs, enc.max_length), atol=1e-5)
    assert q_onnx.shape == (4, enc.dim) and np.allclose(np.linalg.norm(q_onnx, axis=1), 1.0, atol=1e-5)
    assert fast.query_encoder.embed([]).shape == (0, enc.dim)
