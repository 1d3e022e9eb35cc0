"""Several judges: combining rules, and a two-judge labelling run against the real local OpenAI server."""
from __future__ import annotations

import pytest
from openai_server import OpenAIServer, distribution_for, grade_for
from test_labels_openai import _tiny_dataset

from labels.backends.base import LabelResult
from labels.backends.openai import OpenAIBackend
from labels.config import LabelConfig, OpenAISettings
from labels.judges import JudgesBackend, agreement, combine
from labels.metrics import quadratic_kappa
from labels.run import build_pairs, label_pairs
from ltr.data.dataset import Dataset, read_table
from ltr.data.schemas import LABELS


def _r(*probs: float, pid: str = "p") -> LabelResult:
    return LabelResult("q", pid, tuple(probs), "b", "m", "v")  # type: ignore[arg-type]


def test_mean_and_majority_with_a_tie_broken_by_the_mean():
    a, b, c = _r(0.6, 0.4, 0, 0), _r(0, 0.1, 0.2, 0.7), _r(0, 0.45, 0.55, 0)
    probs, grade = combine([a, b, c], "mean")
    assert probs == pytest.approx((0.2, 0.95 / 3, 0.25, 0.7 / 3)) and grade == 1
    probs, grade = combine([a, b, c], "majority")  # votes 0, 3, 2: a tie; the mean has 0.25 on 2, less on 0 and 3
    assert probs == pytest.approx((1 / 3, 0, 1 / 3, 1 / 3)) and grade == 2
    probs, grade = combine([a, b, _r(0, 0, 0.1, 0.9)], "majority")
    assert probs == pytest.approx((1 / 3, 0, 0, 2 / 3)) and grade == 3
    with pytest.raises(ValueError, match="combine"):
        combine([a, b], "median")


def test_a_panel_needs_two_distinct_judges():
    be = OpenAIBackend(OpenAISettings())
    with pytest.raises(ValueError, match="at least two"):
        JudgesBackend([("a", be)])
    with pytest.raises(ValueError, match="distinct `name`"):
        JudgesBackend([("a", be), ("a", be)])


def test_agreement_between_judges_and_with_humans():
    import pandas as pd
    ja = [_r(1, 0, 0, 0, pid="1"), _r(0, 0, 0, 1, pid="2"), _r(0, 0, 1, 0, pid="3"), None]
    jb = [_r(1, 0, 0, 0, pid="1"), _r(0, 0, 1, 0, pid="2"), _r(0, 0, 1, 0, pid="3"), _r(0, 1, 0, 0, pid="4")]
    human = pd.DataFrame({"query_id": ["q"] * 3, "product_id": ["1", "2", "3"], "grade": [0, 3, 1]})
    rep = agreement({"a": ja, "b": jb}, ja, human)
    assert rep["between_judges"]["a ~ b"] == {"n_pairs": 3, "kappa_quadratic": quadratic_kappa([0, 3, 2], [0, 2, 2])}
    assert rep["with_humans"]["b"]["kappa_quadratic"] == pytest.approx(quadratic_kappa([0, 3, 1], [0, 2, 2]))
    assert rep["with_humans"]["combined"]["n_pairs"] == 3


def test_two_judges_chat_and_reasoning_grade_combine_and_report(tmp_path):
    ds_dir = _tiny_dataset(tmp_path / "ds", n_queries=3, per_query=4)
    with OpenAIServer() as srv:
        common = {"base_url": srv.base_url, "api_key": "k", "concurrency": 2, "backoff_base_s": 0.01}
        cfg = LabelConfig.model_validate({
            "backend": "judges", "combine": "mean", "cache_path": str(tmp_path / "c.sqlite"),
            "judges": [{"name": "chat", "openai": {**common, "model": "local-test"}},
                       {"name": "reasoning", "openai": {**common, "model": "gpt-5-mini"}}]})
        s = label_pairs(ds_dir, tmp_path / "labels.parquet", cfg, progress=False)
        assert srv.completed == 24 and [j["new"] for j in s["judges"]] == [12, 12]
        again = label_pairs(ds_dir, tmp_path / "again.parquet", cfg, progress=False)
        assert srv.received == 24 and [j["from_cache"] for j in again["judges"]] == [12, 12]
    pairs = build_pairs(Dataset.load(ds_dir))
    chat = OpenAIBackend(OpenAISettings(model="local-test"))
    reasoning = OpenAIBackend(OpenAISettings(model="gpt-5-mini"))
    ga = [grade_for("\n".join(m["content"] for m in chat.messages(p))) for p in pairs]
    gb = [grade_for("\n".join(m["content"] for m in reasoning.messages(p))) for p in pairs]
    between = s["judges_agreement"]["between_judges"]["chat ~ reasoning"]
    assert between == {"n_pairs": 12, "kappa_quadratic": pytest.approx(quadratic_kappa(ga, gb))}
    lab = read_table(tmp_path / "labels.parquet", LABELS)
    first = lab.set_index(["query_id", "product_id"]).loc[(pairs[0].query_id, pairs[0].product_id)]
    d = distribution_for("\n".join(m["content"] for m in chat.messages(pairs[0])))
    expect = [(x / sum(d) + (1.0 if k == gb[0] else 0.0)) / 2 for k, x in enumerate(d)]
    assert [first[f"p{k}"] for k in range(4)] == pytest.approx(expect)
    assert first["backend"] == "judges:mean" and first["output_mode"] == "mean[logprobs/logprobs, json_schema/one-hot]"
    humans = s["judges_agreement"]["with_humans"]
    assert set(humans) == {"chat", "reasoning", "combined"} and humans["combined"]["n_pairs"] == 12
    assert s["calibration"]["kappa_quadratic"] == pytest.approx(humans["combined"]["kappa_quadratic"])
