"""Model features declared in the config (names and Feast families), validated against the repo's names."""
import numpy as np
import pandas as pd
import pytest
from fixtures.synthetic_frame import synthetic_training_frame

from features import names
from ltr.data.config import ConfigError, load_config
from ltr.experiments import _arm_config, arm_features, build_arms
from ltr.rankers import RankerError
from ltr.run_config import RunConfig
from ltr.train import feature_columns
from ltr.train_config import ExperimentConfig, TrainConfig, TunedParams


def test_repo_and_builders_share_the_names():
    from features.lexical import LEXICAL_FEATURES
    from features.product import PRODUCT_FEATURES
    from features.store import load_repo_module
    repo = load_repo_module()
    assert repo.view_features([7, 28]) == names.view_features([7, 28])
    assert list(LEXICAL_FEATURES) == repo.view_features()["lexical"]
    assert list(PRODUCT_FEATURES) == repo.view_features()["product_features"]


def test_resolve_families_aliases_and_unknowns():
    got = names.resolve(["product", "ce_score", "engagement"], windows=[7])
    assert got[:len(names.PRODUCT)] == list(names.PRODUCT)
    assert "ce_score" in got and "eng_qp_ctr_7d" in got and "eng_p_coec_7d" in got
    assert "eng_qp_ctr_28d" not in got and "bienc_cos" not in got
    with pytest.raises(ValueError, match="train.features: 'lex_bm25_nope'.*Fix"):
        names.resolve(["lexical", "lex_bm25_nope"])


@pytest.mark.parametrize("col,family", [
    ("lex_cov_all", "lexical"), ("ce_score", "content"), ("eng_qp_purch_rate_28d", "engagement_qp"),
    ("eng_p_impr_90d", "engagement_product"), ("eng_p_bogus_7d", None), ("ctr_smoothed", None)])
def test_family_of(col, family):
    assert names.family_of(col) == family


def test_run_config_rejects_unknown_features_in_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  features: [lexical, nope]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, RunConfig)
    msg = str(e.value)
    assert "\n" not in msg and "train.features: 'nope'" in msg and "Fix" in msg and "<root>" not in msg
    p.write_text("features: {windows_days: [3]}\ntrain:\n  features: [eng_qp_ctr_28d]\n")
    with pytest.raises(ConfigError, match="windows: \\[3\\]"):
        load_config(p, RunConfig)


def test_experiments_inherit_the_train_section_unless_given(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  features: [lexical, content]\n  test_fraction: 0.25\n")
    cfg = load_config(p, RunConfig)
    assert cfg.experiments.train == cfg.train and cfg.experiments.train.features == ["lexical", "content"]
    p.write_text("train: {test_fraction: 0.25}\nexperiments: {train: {test_fraction: 0.4}}\n")
    cfg = load_config(p, RunConfig)
    assert cfg.experiments.train.test_fraction == 0.4 and cfg.train.test_fraction == 0.25


def _frame() -> pd.DataFrame:
    f = synthetic_training_frame(6, 5, seed=0)
    f["lex_cov_all"] = np.linspace(0, 1, len(f))
    f["eng_qp_ctr_7d"] = 0.1
    f["eng_p_ctr_7d"] = 0.2
    return f


def test_feature_columns_select_families_in_frame_order():
    f = _frame()
    cfg = TrainConfig(features=["engagement", "lexical", "ce_score"])
    assert feature_columns(f, cfg) == [c for c in f.columns if c in {"ce_score", "lex_cov_all", "eng_qp_ctr_7d",
                                                                     "eng_p_ctr_7d"}]
    assert feature_columns(f, TrainConfig(features=["engagement_qp"])) == ["eng_qp_ctr_7d"]
    with pytest.raises(RankerError, match="nope"):
        feature_columns(f, TrainConfig(features=["lexical", "nope"]))


def test_purchase_arm_keeps_its_column_with_declared_features():
    f = _frame()
    base = TrainConfig(features=["content", "lexical"])
    arms, _ = build_arms(ExperimentConfig(arms=["e"], train=base), TunedParams(alpha=8, beta=0.5, blend_weight=0.6),
                         set(f.columns))
    by = {a.name: a for a in arms}
    arm_p, arm_l = by["CE fine-tuned on purchases"], by["CE fine-tuned on LLM labels"]
    on_purchases = arm_features(f, _arm_config(base, arm_p, 0), arm_p)
    on_llm = arm_features(f, _arm_config(base, arm_l, 0), arm_l)
    assert "ce_purchase_score" in on_purchases and "ce_score" not in on_purchases
    assert "ce_score" in on_llm and "ce_purchase_score" not in on_llm
