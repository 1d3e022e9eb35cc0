"""Chunked cross-encoder scoring (`features.resumable.score_in_chunks`, what the main job's cross-encoder stage
uses): a run killed after N chunks resumes without scoring those chunks again, and gives the scores of a run
that was never killed. The model is a real (tiny-trained) cross-encoder; scored pairs are counted."""
import pandas as pd
import pytest

from features.crossencoder import CrossEncoderConfig, CrossEncoderScorer, fine_tune_cross_encoder, score_pairs
from features.resumable import score_in_chunks

TINY = CrossEncoderConfig(max_length=32, epochs=1, queries_per_batch=2, val_fraction=0.34, freeze_layers=4,
                          head_lr=1e-2, lr=1e-4)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    colors, items = ["red", "blue", "green", "black"], ["mug", "lamp", "chair", "towel", "backpack"]
    products = pd.DataFrame([{"product_id": f"{c}-{i}", "title": f"{c.title()} {i} deluxe"} for c in colors
                             for i in items])
    queries = pd.DataFrame([{"query_id": f"q{k}", "query": f"{c} {i}"} for k, (c, i) in enumerate(zip(colors, items))])
    rows = []
    for k, (c, i) in enumerate(zip(colors, items)):  # 4 queries x 9 candidates, the exact match graded 1
        exact = f"{c}-{i}"
        others = [p for p in products["product_id"] if p != exact][k:k + 8]
        rows += [{"query_id": f"q{k}", "product_id": p, "score": float(p == exact)} for p in [exact, *others]]
    pairs = pd.DataFrame(rows)
    model = tmp_path_factory.mktemp("ce") / "model"
    fine_tune_cross_encoder(pairs, products, queries, model, TINY, seed=0, progress=False)
    return products, queries, pairs[["query_id", "product_id"]], CrossEncoderScorer(model, activation="none")


def counting_scorer(shop, seen: list[int]):
    products, queries, _, scorer = shop

    def score(chunk: pd.DataFrame) -> pd.DataFrame:
        seen.append(len(chunk))
        return score_pairs(chunk, products, queries, scorer)
    return score


def test_killed_scoring_resumes_without_rescoring_finished_chunks(shop, tmp_path):
    pairs, scorer = shop[2], shop[3]
    n = len(pairs)
    whole = score_in_chunks(pairs, counting_scorer(shop, []), tmp_path / "whole", scorer.version, chunk_rows=8)
    first: list[int] = []

    def die_after_two(done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        score_in_chunks(pairs, counting_scorer(shop, first), tmp_path / "parts", scorer.version, chunk_rows=8,
                        on_chunk=die_after_two)
    assert first == [8, 8]
    second: list[int] = []
    got = score_in_chunks(pairs, counting_scorer(shop, second), tmp_path / "parts", scorer.version, chunk_rows=8)
    assert sum(second) == n - 16 and len(second) == -(-n // 8) - 2  # only the unfinished chunks were scored
    pd.testing.assert_frame_equal(got, whole)
    single = score_pairs(pairs, shop[0], shop[1], scorer)
    pd.testing.assert_frame_equal(got, single, check_exact=False, rtol=1e-5, atol=1e-4)
    assert got["ce_score"].nunique() > len(got) // 2  # real, distinct logits, not saturated scores


def test_parts_of_another_model_or_other_pairs_are_not_reused(shop, tmp_path):
    pairs, scorer = shop[2], shop[3]
    score_in_chunks(pairs, counting_scorer(shop, []), tmp_path / "p", scorer.version, chunk_rows=8)
    again: list[int] = []
    score_in_chunks(pairs, counting_scorer(shop, again), tmp_path / "p", "another-model", chunk_rows=8)
    assert sum(again) == len(pairs)
    moved: list[int] = []
    score_in_chunks(pairs.iloc[::-1], counting_scorer(shop, moved), tmp_path / "p", "another-model", chunk_rows=8)
    assert sum(moved) == len(pairs)
    with pytest.raises(ValueError, match="chunk_rows"):
        score_in_chunks(pairs, counting_scorer(shop, []), tmp_path / "p", "m", chunk_rows=0)
