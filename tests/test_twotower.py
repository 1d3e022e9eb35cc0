"""Two-tower fine-tuning (features/twotower): the curriculum's order, the saved model's round trip, config
errors, and the saved model as a bi-encoder. Real MiniLM weights, a few dozen pairs, one step a stage."""
import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.biencoder import BiEncoder, default_biencoder, score_pairs
from features.config import FeaturesConfig
from features.twotower import (
    DEFAULT_STAGES,
    META_FILE,
    TwoTowerConfig,
    feature_bi_encoder,
    fit_two_tower,
    load_tower,
    load_two_tower,
    read_meta,
)
from features.twotower.curriculum import stages
from ltr.data.encoder import default_encoder_path
from ltr.retrieval import DIFFICULTY, LEVELS

TOPICS = {
    "q_shoes": ("red running shoes", ["Red Running Shoes mesh", "Trail running shoe red", "Red sneakers for running",
                                      "Running shoes men red"], ["Shoe polish kit", "Red wine glass set",
                                                                  "Running socks pack", "Shoe rack 3 tier"]),
    "q_bottle": ("stainless water bottle", ["Stainless steel water bottle 32 oz", "Insulated steel bottle",
                                            "Metal water bottle stainless", "Vacuum flask stainless"],
                 ["Plastic bottle brush", "Bottle opener steel", "Water filter pitcher", "Baby bottle warmer"]),
    "q_phones": ("wireless headphones", ["Bluetooth wireless headphones", "Over-ear wireless headset",
                                         "Wireless noise cancelling headphones", "Wireless earbuds"],
                 ["Headphone stand", "Wired earphones 3.5mm", "Phone case", "Audio splitter cable"]),
    "q_yoga": ("yoga mat thick", ["Thick yoga mat 10mm", "Extra thick exercise yoga mat", "Yoga mat non slip thick",
                                  "Foam yoga mat"], ["Yoga pants women", "Mat cleaner spray", "Dumbbell set",
                                                     "Yoga block"]),
    "q_coffee": ("coffee grinder", ["Electric coffee grinder", "Burr coffee grinder", "Manual coffee bean grinder",
                                    "Coffee mill grinder"], ["Coffee mug", "Coffee filters 100", "Pepper grinder",
                                                             "Coffee table"]),
}
CFG = {"max_length": 24, "batch_size": 16, "freeze_layers": 4, "lr": 1e-4, "batch_size_eval": 16}  # 1 step a stage
VAL = ("q_band", "apple watch band", ["Silicone band for Apple Watch", "Apple Watch strap leather"],
       ["Apple Watch Series 9 GPS", "Apple iPhone charger", "Watch winder box"])


def _data():
    products, pairs, queries = [], [], []
    for k, (qid, (query, pos, neg)) in enumerate(TOPICS.items()):
        queries.append({"query_id": qid, "query": query})
        for j, (title, grade) in enumerate([(t, 3) for t in pos] + [(t, 0) for t in neg]):
            pid = f"{qid}_p{j}"
            products.append({"product_id": pid, "title": title})
            # every level in every query, so each stage has triplets
            pairs.append({"query_id": qid, "product_id": pid, "grade": grade, "level": LEVELS[(j + k) % 5]})
    qid, query, pos, neg = VAL
    queries.append({"query_id": qid, "query": query})
    products += [{"product_id": f"{qid}_p{j}", "title": t} for j, t in enumerate(pos + neg)]
    return pd.DataFrame(products), pd.DataFrame(queries), pd.DataFrame(pairs)


def _val_pairs():
    qid, _, pos, neg = VAL
    return pd.DataFrame({"query_id": qid, "product_id": [f"{qid}_p{j}" for j in range(len(pos + neg))],
                         "grade": [3] * len(pos) + [0] * len(neg)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training (three stages, one step each) inside an MLflow run on a throwaway store."""
    import mlflow

    from ltr.tracking import setup_tracking

    products, queries, pairs = _data()
    tmp = tmp_path_factory.mktemp("tt")
    setup_tracking(f"sqlite:///{tmp}/mlflow.db", experiment="tt-test")
    with mlflow.start_run() as run:
        meta = fit_two_tower(pairs, products, queries, tmp / "model", CFG, seed=0, val_pairs=_val_pairs(),
                             progress=False)
    return tmp / "model", meta, products, queries, pairs, run.info.run_id


def test_default_stages_cover_the_miners_levels_in_difficulty_order():
    flat = [lvl for s in DEFAULT_STAGES for lvl in s]
    assert sorted(flat) == sorted(LEVELS)
    assert [DIFFICULTY[lvl] for lvl in flat] == sorted(DIFFICULTY[lvl] for lvl in flat)


def test_curriculum_trains_stages_easy_to_hard(trained):
    meta = trained[1]
    recs = meta["stages"]
    assert [r["stage"] for r in recs] == [0, 1, 2]
    seen = []
    for r in recs:
        assert r["steps"] >= 1
        for levels in r["step_levels"]:
            assert set(levels) <= set(r["levels"])
            seen.append(max(DIFFICULTY[lvl] for lvl in levels))
    assert seen == sorted(seen) and seen[0] <= 2 and seen[-1] == 5


def test_unordered_control_trains_the_same_triplets_in_one_stage():
    _, _, pairs = _data()
    pairs = pairs.assign(_stage=pairs["level"].map(TwoTowerConfig().stage_of()))
    cur = stages(pairs, TwoTowerConfig(), np.random.default_rng(0))
    ctl = stages(pairs, TwoTowerConfig(curriculum=False), np.random.default_rng(0))
    key = ["query_id", "pos", "neg"]
    both = pd.concat([s.triplets for s in cur])[key].sort_values(key).reset_index(drop=True)
    assert len(ctl) == 1 and len(cur) == 3
    pd.testing.assert_frame_equal(both, ctl[0].triplets[key].sort_values(key).reset_index(drop=True))
    assert {lvl for s in cur for lvl in s.triplets["level"]} == set(LEVELS)


def test_saved_model_round_trips_to_identical_embeddings(trained, tmp_path):
    out = trained[0]
    texts = ["red running shoes", "Insulated steel bottle | Brand: Acme", "yoga mat thick"]
    first = load_two_tower(out).encode(texts)
    tower = load_tower(out, 0, CFG["max_length"])
    from features.twotower.artifact import save_two_tower
    save_two_tower(tower.model, tower.tok, read_meta(out), default_encoder_path(), tmp_path / "again")
    again = load_two_tower(tmp_path / "again").encode(texts)
    np.testing.assert_array_equal(first, again)
    # the trainer's cached-bottom path computes what a plain full forward pass computes
    cached = load_tower(out, CFG["freeze_layers"], CFG["max_length"]).embed(texts)
    np.testing.assert_allclose(cached, first, atol=2e-6)


def test_trained_model_is_a_bi_encoder(trained):
    out, meta, products, queries, pairs, _ = trained
    be = BiEncoder(out)
    assert be.max_length == CFG["max_length"] and be.dim == 384
    feat = score_pairs(pairs, products, queries, encoder=be)
    zero = score_pairs(pairs, products, queries, encoder=BiEncoder(max_length=CFG["max_length"]))
    assert feat["bienc_cos"].between(-1, 1).all()
    moved = np.abs(feat["bienc_cos"] - zero["bienc_cos"]).max() > 1e-4
    assert moved == (meta["metrics"]["best_step"] > 0)  # early stopping saved the best step (0: the start)
    assert json.loads((out / "config.json").read_text())["ltr_two_tower_version"] == meta["version"]
    assert (out / "modules.json").exists() and (out / "1_Pooling" / "config.json").exists()
    # FeaturesConfig.bienc_path -> the encoder behind bienc_cos, one instance per path
    fb = feature_bi_encoder(FeaturesConfig(bienc_path=str(out)).bienc_path)
    assert fb is feature_bi_encoder(out) and fb.max_length == CFG["max_length"]
    assert feature_bi_encoder(FeaturesConfig().bienc_path) is default_biencoder()
    assert meta["val_query_ids"] == ["q_band"] and meta["metrics"]["n_train_queries"] == 5
    assert [h["step"] for h in meta["history"]] == [0, 1, 2, 3]


def test_bad_config_and_bad_pairs_fail_with_the_fix():
    with pytest.raises(ValidationError, match="more than once"):
        TwoTowerConfig(stages=[["medium"], ["medium", "hard_negative"]])
    with pytest.raises(ValidationError, match="must be below positive_min_grade"):
        TwoTowerConfig(negative_max_grade=2, positive_min_grade=2)
    with pytest.raises(ValidationError, match="batch_siz"):
        TwoTowerConfig(batch_siz=8)
    products, queries, pairs = _data()
    with pytest.raises(ValueError, match="no stage lists.*Fix"):
        fit_two_tower(pairs.assign(level="hardest"), products, queries, "/nonexistent/x", CFG, progress=False)
    with pytest.raises(ValueError, match="lacks column 'level'"):
        fit_two_tower(pairs.drop(columns="level"), products, queries, "/nonexistent/x", CFG, progress=False)
    with pytest.raises(ValueError, match="whole numbers 0..3"):
        fit_two_tower(pairs.assign(grade=5), products, queries, "/nonexistent/x", CFG, progress=False)
    with pytest.raises(FileNotFoundError, match="not a saved two-tower"):
        load_two_tower(default_encoder_path())
    with pytest.raises(FileNotFoundError, match="bienc_path=.*Fix"):
        feature_bi_encoder("/nonexistent/model")


def test_training_is_logged_to_mlflow(trained):
    import mlflow

    meta, run_id = trained[1], trained[5]
    got = mlflow.get_run(run_id)
    assert got.data.params["tt.version"] == meta["version"] and got.data.params["tt.curriculum"] == "True"
    assert got.data.metrics["tt.val_ndcg_at_k"] == pytest.approx(meta["metrics"]["val_ndcg_at_k"])
    names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="two_tower")]
    assert f"two_tower/{META_FILE}" in names and "two_tower/model.safetensors" in names
