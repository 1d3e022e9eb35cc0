"""The disk embedding cache: one encode per (text, model), reused across runs, resumed after a crash.

A "run" here is a fresh `BiEncoder` (a new process has an empty in-memory memo); what the model is asked
to embed is counted by wrapping the encoder's `embed` (the real MiniLM still does the work).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.biencoder import BiEncoder, score_pairs
from ltr.data.embedding_cache import EmbeddingCache, default_cache_dir, model_identity

TEXTS = [f"{c} {item} {'with a long description of its many features ' * (i % 4)}size {i}"
         for i, (c, item) in enumerate([(c, it) for c in ("red", "blue", "green", "black")
                                        for it in ("mug", "lamp", "chair", "towel", "backpack")])]


def run(root: Path | None = None, chunk: int = 8192) -> tuple[BiEncoder, list[str]]:
    """A fresh bi-encoder (a new run) whose model calls are recorded."""
    bi = BiEncoder(max_length=32)
    asked: list[str] = []
    real = bi.encoder.embed

    def spy(texts, *a, **k):
        asked.extend(texts)
        return real(texts, *a, **k)

    bi.encoder.embed = spy
    return (bi.cached(root, chunk) if root is not None else bi), asked


def test_cached_run_equals_uncached_and_a_later_run_embeds_only_new_texts(tmp_path):
    ref = run()[0].encode(TEXTS)
    first, asked1 = run(tmp_path)
    np.testing.assert_array_equal(first.encode(TEXTS), ref)  # one chunk: the very batches of an uncached run
    assert sorted(asked1) == sorted(TEXTS)
    later, asked2 = run(tmp_path)
    got = later.encode(TEXTS + ["a brand new product"])
    assert asked2 == ["a brand new product"]
    np.testing.assert_array_equal(got[:len(TEXTS)], ref)
    other = BiEncoder(max_length=16).cached(tmp_path)  # another truncation is another identity
    assert other.disk_cache.dir != later.disk_cache.dir and not other.disk_cache.lookup(TEXTS)


def test_killed_run_resumes_without_redoing_finished_chunks(tmp_path):
    ref = run()[0].encode(TEXTS)
    killed, asked1 = run(tmp_path, chunk=4)

    def die_after_two(done: int, total: int) -> None:
        assert total == 5
        if done == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        killed.encode(TEXTS, on_chunk=die_after_two)
    assert len(asked1) == 8 and len(killed.disk_cache.shards()) == 2
    resumed, asked2 = run(tmp_path, chunk=4)
    got = resumed.encode(TEXTS)
    assert len(asked2) == 12 and not set(asked1) & set(asked2)  # the two finished chunks are not embedded again
    assert len(resumed.disk_cache.shards()) == 5
    np.testing.assert_allclose(got, ref, atol=1e-5)  # other batch compositions: float noise only


def test_score_pairs_with_a_cache_dir_gives_the_uncached_feature(tmp_path):
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(len(TEXTS))], "title": TEXTS})
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["red mug", "blue lamp"]})
    pairs = pd.DataFrame({"query_id": ["q1"] * 10 + ["q2"] * 10, "product_id": list(products.product_id)})
    ref = score_pairs(pairs, products, queries, encoder=BiEncoder(max_length=32))
    got = score_pairs(pairs, products, queries, encoder=BiEncoder(max_length=32), cache_dir=tmp_path)
    pd.testing.assert_frame_equal(got, ref)
    assert (tmp_path / BiEncoder(max_length=32).cached(tmp_path).disk_cache.dir.name).is_dir()


def test_unreadable_shard_and_wrong_width_name_the_fix(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 4)
    cache.store(["a", "b"], np.ones((2, 4)))
    assert set(cache.lookup(["a", "b", "c"])) == {"a", "b"}
    with pytest.raises(ValueError, match="embedding matrix"):
        cache.store(["a"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="delete"):
        EmbeddingCache(tmp_path, "m", 8).lookup(["a"])
    (cache.dir / "zz-broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="delete that file"):
        cache.lookup(["c"])


def test_identity_follows_weights_and_length_and_the_location_follows_the_environment(tmp_path, monkeypatch):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"weights-1")
    a = model_identity(m, 128)
    assert a != model_identity(m, 64)
    (m / "model.safetensors").write_bytes(b"weights-2")
    assert model_identity(m, 128) != a
    monkeypatch.setenv("LTR_EMBEDDING_CACHE", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("LTR_EMBEDDING_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LTR_EMBEDDING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ltr-platform" / "embeddings"


def test_features_build_reuses_precomputed_content_scores(tmp_path):
    """`ltr features build --content-scores`: the given scores land in the content view; no encoder runs."""
    from ltr.cli import app
    from ltr.data.dataset import Dataset
    from tests.fixtures.tiny_dataset import tiny_dataset

    ds = tiny_dataset(tmp_path / "ds")
    cand = Dataset.load(ds).candidates[["query_id", "product_id"]]
    scores = cand.assign(bienc_cos=np.linspace(-0.5, 0.5, len(cand)))
    scores.to_parquet(tmp_path / "bienc.parquet", index=False)
    (tmp_path / "cfg.yaml").write_text("features:\n  families: [content]\n")
    res = CliRunner().invoke(app, ["features", "build", "--dataset", str(ds), "--out", str(tmp_path / "f"),
                                   "--content-scores", str(tmp_path / "bienc.parquet"),
                                   "--config", str(tmp_path / "cfg.yaml")])
    assert res.exit_code == 0, res.output
    got = pd.read_parquet(tmp_path / "f" / "content.parquet").merge(scores, on=["query_id", "product_id"])
    assert len(got) == len(cand) and (got["bienc_cos_x"] == got["bienc_cos_y"]).all()
    res = CliRunner().invoke(app, ["features", "build", "--dataset", str(ds), "--out", str(tmp_path / "g"),
                                   "--content-scores", str(tmp_path / "nope.parquet")])
    assert res.exit_code == 2 and "nope.parquet" in res.output and "Fix:" in res.output
