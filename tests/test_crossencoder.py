"""Cross-encoder: tiny fine-tune, HF/sentence-transformers compatibility, fast scoring, bad input."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import spearmanr

from features.crossencoder import (
    META_FILE,
    CrossEncoderConfig,
    CrossEncoderScorer,
    fine_tune_cross_encoder,
    score_pairs,
)
from features.crossencoder.batching import _length_batches
from features.text import pair_texts
from ltr.data.encoder import default_encoder_path
from ltr.data.metrics import ndcg_per_query

torch.set_num_threads(2)

COLORS = ["red", "blue", "green", "black", "white", "yellow"]
ITEMS = ["shoes", "mug", "lamp", "backpack", "towel", "chair"]


def tiny_world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """6 queries x 6 candidates: the product whose title matches the query is graded 1, half-matches 0.33."""
    rng = np.random.default_rng(0)
    products, queries, pairs = [], [], []
    for c in COLORS:
        for it in ITEMS:
            products.append({"product_id": f"{c}-{it}", "title": f"{c.title()} {it} deluxe", "brand": "Acme",
                             "color": c, "category": f"Home > {it}", "description": None, "bullet_points": None})
    for qi, (c, it) in enumerate(zip(COLORS, ITEMS)):
        qid = f"q{qi}"
        queries.append({"query_id": qid, "query": f"{c} {it}"})
        cands = {f"{c}-{it}"} | {f"{c}-{x}" for x in rng.choice(ITEMS, 2)} | \
            {f"{x}-{it}" for x in rng.choice(COLORS, 2)} | {f"{rng.choice(COLORS)}-{rng.choice(ITEMS)}"}
        for pid in sorted(cands):
            pc, pit = pid.split("-")
            score = 1.0 if (pc, pit) == (c, it) else (0.33 if pit == it else 0.0)
            pairs.append({"query_id": qid, "product_id": pid, "score": score})
    return pd.DataFrame(pairs), pd.DataFrame(products), pd.DataFrame(queries)


def mean_ndcg(pairs: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k by ltr.data.metrics, the labels' own scores (0, 0.33, 1) as gains: grade = round(3 * score)."""
    grade = (pairs["score"] * 3).round().astype(int)
    gains = dict(zip(grade, pairs["score"]))
    return float(ndcg_per_query(pairs["query_id"], scores, grade, k, gains=gains).mean())


TINY = CrossEncoderConfig(max_length=32, epochs=1, queries_per_batch=2, val_fraction=0.34, freeze_layers=4,
                          head_lr=1e-2, lr=1e-4, head="segment_cosine", cls_residual=True)
TINY_CLS = TINY.model_copy(update={"head": "cls", "cls_residual": False})


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    pairs, products, queries = world
    out = tmp_path_factory.mktemp("ce") / "model"
    meta = fine_tune_cross_encoder(pairs, products, queries, out, TINY, seed=3, progress=False)
    return out, meta


@pytest.fixture(scope="module")
def trained_cls(world, tmp_path_factory):
    pairs, products, queries = world
    out = tmp_path_factory.mktemp("ce_cls") / "model"
    meta = fine_tune_cross_encoder(pairs, products, queries, out, TINY_CLS, seed=3, progress=False)
    return out, meta


@pytest.mark.slow  # a second fine-tune (~20 s on 2 busy cores); the [CLS] head is no longer the default
def test_cls_head_is_a_plain_hf_cross_encoder(trained_cls, world):
    from sentence_transformers import CrossEncoder

    out, meta = trained_cls
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and "auto_map" not in cfg
    assert meta["config"]["head"] == "cls" and meta["metrics"]["steps"] == 2
    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    ours = CrossEncoderScorer(out).score(qs, ts, batch_size=7)
    ref = CrossEncoder(str(out), device="cpu").predict(list(zip(qs, ts)), batch_size=16, show_progress_bar=False)
    assert np.abs(ours - ref).max() < 1e-4 and ours.std() > 0


def test_saved_as_hf_cross_encoder_with_metadata(trained, world):
    out, meta = trained
    for f in ("config.json", "model.safetensors", "tokenizer.json", META_FILE, "crossencoder_modeling.py"):
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg.get("id2label", {"0": "LABEL_0"})) == 1
    assert cfg["architectures"] == ["BertSegmentCosineForSequenceClassification"]
    assert cfg["ltr_head"] == "segment_cosine"
    assert cfg["auto_map"]["AutoModelForSequenceClassification"].startswith("crossencoder_modeling.")
    disk = json.loads((out / META_FILE).read_text())
    assert disk["version"] == meta["version"] and disk["version"].startswith("ce-")
    assert disk["config"]["max_length"] == 32 and disk["seed"] == 3
    m = disk["metrics"]
    assert m["n_val_queries"] == 2 and m["n_train_queries"] == 4
    assert m["n_train_pairs"] + m["n_val_pairs"] == len(world[0])
    assert 0.0 <= m["val_ndcg_at_k"] <= 1.0 and m["steps"] == 2
    # validation queries never trained on
    train_q = set(world[0]["query_id"]) - set(disk["val_query_ids"])
    assert len(train_q) == 4


def test_sentence_transformers_loads_same_weights(trained, world):
    from sentence_transformers import CrossEncoder

    out, _ = trained
    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    ours = CrossEncoderScorer(out).score(qs, ts, batch_size=7)
    # the custom head ships its code next to the weights (auto_map), so ST needs trust_remote_code
    ref = CrossEncoder(str(out), device="cpu", trust_remote_code=True).predict(
        list(zip(qs, ts)), batch_size=16, show_progress_bar=False)
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.std() > 1e-3  # calibrated: sigmoid is not saturated, and a real model, not a constant


def test_length_bucketing_is_order_and_batch_invariant(trained, world):
    out, _ = trained
    pairs, products, queries = world
    qs, ts = pair_texts(pairs.head(16), products, queries, fields=("title", "bullet_points"))
    ts = [t + " extra words" * (i % 5) for i, t in enumerate(ts)]  # varied lengths
    sc = CrossEncoderScorer(out, activation="none")
    a = sc.score(qs, ts, batch_size=64)
    b = sc.score(qs, ts, batch_size=1)
    perm = np.random.default_rng(1).permutation(len(qs))
    c = sc.score([qs[i] for i in perm], [ts[i] for i in perm], batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a[perm], c, atol=1e-4)
    assert sc.score([], []).shape == (0,)


def test_cached_frozen_bottom_gives_the_same_logits(world):
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _tokenize_pairs
    from features.crossencoder.frozen import _frozen_states, _top_forward

    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    model, tok = load_base_cross_encoder(None, 32)
    model.eval()
    enc = _tokenize_pairs(tok, qs, ts, 32)
    states, _, _ = _frozen_states(model, enc, 4, 0, 16, False)
    idx = list(range(12))
    with torch.inference_mode():
        a = _top_forward(model, states, idx, 4)
        b = model(**_collate(enc, idx, 0)).logits[:, 0]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("update", [{"segment_local_layers": 0}, {"segment_local_layers": 2},
                                    {"segment_local_layers": 2, "segment_own_cls": True, "cross_gate_init": -1.0}])
def test_cached_frozen_bottom_gives_the_same_logits_segment_head(world, update):
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _tokenize_pairs
    from features.crossencoder.frozen import _frozen_states, _top_forward

    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    model, tok = load_base_cross_encoder(None, 32, TINY.model_copy(update=update))
    model.eval()
    enc = _tokenize_pairs(tok, qs, ts, 32)
    states, _, segs = _frozen_states(model, enc, 3, 0, 16, False)
    idx = list(range(12))
    with torch.inference_mode():
        a = _top_forward(model, states, idx, 3, segs)
        batch = _collate(enc, idx, 0)
        b = model(**batch).logits[:, 0]
        del batch["token_type_ids"]  # segments are recovered from [SEP] when a caller omits them
        c = model(**batch).logits[:, 0]
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(b, c, atol=1e-5)


def test_own_cls_layout_with_local_attention_is_exactly_the_bi_encoder(world):
    """segment_own_cls lays each segment out as the bi-encoder saw it alone ([CLS] x [SEP], positions
    from 0): with within-segment attention in every layer the joint pass computes the bi-encoder cosine."""
    from features.biencoder import BiEncoder
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _tokenize_pairs

    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    cfg = TINY.model_copy(update={"segment_own_cls": True, "segment_local_layers": 6, "cos_scale_init": 1.0})
    model, tok = load_base_cross_encoder(None, 512, cfg)
    enc = _tokenize_pairs(tok, qs, ts, 512)  # no truncation: each side is the bi-encoder's whole input
    with torch.inference_mode():
        s = model.eval()(**_collate(enc, list(range(len(qs))), 0)).logits[:, 0].numpy()
    bi = BiEncoder(max_length=512).cosine(qs, ts)
    np.testing.assert_allclose(s, bi, atol=1e-5)


def test_cross_gate_is_trained_only_above_the_frozen_layers(world):
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _tokenize_pairs
    from features.crossencoder.frozen import _freeze

    model, tok = load_base_cross_encoder(None, 32, TINY.model_copy(update={
        "segment_local_layers": 2, "segment_own_cls": True, "cross_gate_init": -3.0}))
    assert len(model.cross_gate) == 4 and float(model.cross_gate[0].detach()[0]) == -3.0
    _freeze(model, 3)
    assert [g.requires_grad for g in model.cross_gate] == [False, True, True, True]
    pairs, products, queries = world
    qs, ts = pair_texts(pairs.head(6), products, queries)
    model(**_collate(_tokenize_pairs(tok, qs, ts, 32), list(range(6)), 0)).logits.sum().backward()
    assert model.cross_gate[0].grad is None and all(float(g.grad.abs().sum()) > 0 for g in model.cross_gate[1:])


def test_gated_own_cls_model_trains_on_given_validation_queries_and_reloads(world, tmp_path):
    from sentence_transformers import CrossEncoder

    pairs, products, queries = world
    cfg = TINY.model_copy(update={"segment_local_layers": 2, "segment_own_cls": True, "cross_gate_init": -2.0})
    meta = fine_tune_cross_encoder(pairs, products, queries, tmp_path / "m", cfg, seed=0, progress=False,
                                   val_query_ids=["q0", "q5"])
    assert meta["val_query_ids"] == ["q0", "q5"] and meta["metrics"]["n_train_queries"] == 4
    qs, ts = pair_texts(pairs, products, queries)
    sc = CrossEncoderScorer(tmp_path / "m")
    assert [float(g.detach()[0]) for g in sc.model.cross_gate][:2] == [-2.0, -2.0]  # frozen layers' gates
    ref = CrossEncoder(str(tmp_path / "m"), device="cpu", trust_remote_code=True).predict(
        list(zip(qs, ts)), batch_size=16, show_progress_bar=False)
    assert np.abs(sc.score(qs, ts) - ref).max() < 1e-4
    onnx = CrossEncoderScorer(tmp_path / "m", backend="onnx", onnx_dir=tmp_path / "onnx")  # traced layout
    assert np.abs(onnx.score(qs, ts, batch_size=5) - sc.score(qs, ts)).max() < 1e-4
    with pytest.raises(ValueError, match="val_query_ids"):
        fine_tune_cross_encoder(pairs, products, queries, tmp_path / "x", cfg, val_query_ids=["nope"])
    assert not (tmp_path / "x").exists()


def test_untrained_segment_head_starts_near_the_bi_encoder(world):
    """The point of the head: before any training it already ranks like the bi-encoder cosine."""
    from features.biencoder import BiEncoder
    from features.crossencoder import load_base_cross_encoder
    from features.crossencoder.batching import _collate, _tokenize_pairs

    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    model, tok = load_base_cross_encoder(None, 32, TINY)
    enc = _tokenize_pairs(tok, qs, ts, 32)
    with torch.inference_mode():
        s = model.eval()(**_collate(enc, list(range(len(qs))), 0)).logits[:, 0].numpy()
    bi = BiEncoder(max_length=32).cosine(qs, ts)
    assert spearmanr(s, bi).statistic > 0.6
    assert mean_ndcg(pairs, s, k=3) > 0.8


def test_length_batches_respect_limits():
    lengths = [5, 30, 12, 30, 7, 8, 29]
    bs = _length_batches(lengths, batch_size=3, max_tokens=64)
    assert sorted(np.concatenate(bs).tolist()) == list(range(7))
    for b in bs:
        assert len(b) <= 3 and max(lengths[i] for i in b) * len(b) <= 64 or len(b) == 1
    widths = [max(lengths[i] for i in b) for b in bs]
    assert widths == sorted(widths, reverse=True)


def test_score_pairs_feature_table(trained, world):
    out, _ = trained
    pairs, products, queries = world
    df = score_pairs(pairs[["query_id", "product_id"]], products, queries, CrossEncoderScorer(out))
    assert list(df.columns) == ["query_id", "product_id", "ce_score"]
    assert len(df) == len(pairs) and df["ce_score"].between(0, 1).all()


def test_onnx_backends_match_torch(trained, world, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    out, _ = trained
    pairs, products, queries = world
    qs, ts = pair_texts(pairs, products, queries)
    ref = CrossEncoderScorer(out, activation="none").score(qs, ts)
    fp32 = CrossEncoderScorer(out, backend="onnx", activation="none", onnx_dir=tmp_path).score(qs, ts)
    assert np.abs(fp32 - ref).max() < 1e-3
    q8 = CrossEncoderScorer(out, backend="onnx-int8", activation="none", onnx_dir=tmp_path).score(qs, ts)
    assert spearmanr(q8, ref).statistic > 0.9
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # cached exports


def test_bad_input_is_rejected_and_leaves_saved_model_intact(trained, world):
    out, meta = trained
    pairs, products, queries = world
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="missing column"):
        fine_tune_cross_encoder(pairs.drop(columns="score"), products, queries, out, TINY, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fine_tune_cross_encoder(pairs.assign(score=pairs["score"] * 3), products, queries, out, TINY,
                                progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        fine_tune_cross_encoder(pd.concat([pairs, pairs.head(1)]), products, queries, out, TINY, progress=False)
    with pytest.raises(KeyError, match="product_id"):
        fine_tune_cross_encoder(pairs.assign(product_id=[f"nope{i}" for i in range(len(pairs))]), products, queries,
                                out, TINY, progress=False)
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        CrossEncoderConfig(max_len=32)
    with pytest.raises(ValidationError, match="text_fields"):
        CrossEncoderConfig(text_fields=("title", "price"))
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / META_FILE).read_text())["version"] == meta["version"]


def test_scorer_refuses_encoder_without_head(tmp_path):
    with pytest.raises(ValueError, match="classification head"):
        CrossEncoderScorer(default_encoder_path())
    with pytest.raises(FileNotFoundError, match="config.json"):
        CrossEncoderScorer(tmp_path)


def test_validation_ndcg_is_the_project_ndcg():
    """Early stopping uses ltr.data.metrics' NDCG with gains 2^(3*score) - 1 (score g/3 gains 2^g - 1, as grade g
    with exp gains); queries with nothing relevant are left out of the mean, not counted as 0."""
    from features.crossencoder.trainer import _val_ndcg

    def val_ndcg(groups, grades, scores, k):
        return _val_ndcg(groups, np.asarray(grades, float) / 3, np.asarray(scores, float), k)

    assert val_ndcg(["a"] * 3, [1, 0, 0], [3, 2, 1], k=10) == pytest.approx(1.0)
    assert val_ndcg(["a"] * 2, [0, 1], [1, 0], k=1) == pytest.approx(0.0)
    assert val_ndcg(["a", "a", "b", "b"], [1, 0, 1, 0], [1, 0, 0, 1], k=2) == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert val_ndcg(["a", "a", "z", "z"], [1, 0, 0, 0], [1, 0, 0, 1], k=2) == pytest.approx(1.0)  # z: left out
    assert val_ndcg(["z", "z"], [0, 0], [1, 0], k=2) == 0.0  # nothing relevant anywhere: 0, not NaN
    rng = np.random.default_rng(0)
    q, g, s = np.repeat(list("abcdef"), 8), rng.integers(0, 4, 48), rng.random(48)
    ref = ndcg_per_query(q, s, g, 5, gains="exp")
    assert val_ndcg(q, g, s, k=5) == pytest.approx(float(np.nanmean(ref)))


@pytest.mark.slow
def test_fine_tuning_learns_the_tiny_world(world, tmp_path):
    pairs, products, queries = world
    cfg = TINY.model_copy(update={"epochs": 6, "val_fraction": 0.0, "freeze_layers": 2, "cache_frozen": False})
    fine_tune_cross_encoder(pairs, products, queries, tmp_path / "m", cfg, seed=0, progress=False)
    qs, ts = pair_texts(pairs, products, queries)
    s = CrossEncoderScorer(tmp_path / "m").score(qs, ts)
    assert mean_ndcg(pairs, s, k=3) > 0.9


def test_continue_from_a_cross_encoder_with_a_separate_distillation_teacher(trained, world, tmp_path):
    """base_model may be a fine-tuned cross-encoder (e.g. one trained on the world's LLM labels); the
    distillation target then comes from `distill_teacher`, a plain bi-encoder, checked before training."""
    pairs, products, queries = world
    cfg = TINY.model_copy(update={"base_model": str(trained[0]), "distill_weight": 1.0,
                                  "distill_teacher": str(tmp_path / "no-such-encoder")})
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        fine_tune_cross_encoder(pairs, products, queries, tmp_path / "bad", cfg, seed=3, progress=False)
    cfg = cfg.model_copy(update={"distill_teacher": str(default_encoder_path())})
    meta = fine_tune_cross_encoder(pairs, products, queries, tmp_path / "m", cfg, seed=3, progress=False)
    assert meta["config"]["distill_teacher"] == str(default_encoder_path())
    qs, ts = pair_texts(pairs, products, queries)
    assert np.isfinite(CrossEncoderScorer(tmp_path / "m").score(qs, ts)).all()
