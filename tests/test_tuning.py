"""ltr.tuning (Optuna, resumable, nested MLflow runs, Pareto, operating point) and ltr.experiments."""
import json

import numpy as np
import optuna
import pandas as pd
import pytest
from fixtures.synthetic_frame import synthetic_training_frame
from mlflow import MlflowClient

from ltr import tracking as T
from ltr.experiments import ExperimentError, build_arms, run_experiments
from ltr.train_config import ExperimentConfig, TrainConfig, TuneConfig, TunedParams
from ltr.tuning import TuningError, choose_operating_point, pareto_mask, tune

TINY = {"model": {"n_estimators": 10, "early_stopping_rounds": 5, "max_depth": 3, "n_jobs": 1}}


def test_pareto_mask_hand_case():
    c = np.array([0.9, 0.8, 0.7, 0.85])
    e = np.array([0.5, 0.6, 0.55, 0.5])
    assert list(pareto_mask(c, e)) == [True, True, False, False]


def test_operating_point_rule():
    trials = pd.DataFrame({"number": [0, 1, 2, 3], "content": [0.95, 0.90, 0.80, 0.70],
                           "engagement": [0.50, 0.595, 0.61, 0.62], "params_alpha": [1.0, 2.0, 3.0, 4.0]})
    op = choose_operating_point(trials, baseline_engagement=0.60, tolerance=0.01)   # floor 0.594
    assert op["number"] == 1 and op["constraint_met"] and op["params"]["alpha"] == 2.0
    op = choose_operating_point(trials, baseline_engagement=0.70, tolerance=0.01)
    assert op["number"] == 3 and not op["constraint_met"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    with T.using_tracking(f"sqlite:///{d}/mlflow.db", "ltr-tune-test", (d / "artifacts").as_uri()):
        yield d


def test_study_is_resumable_and_tracked(store):
    frame = synthetic_training_frame(30, 10, seed=7)
    cfg = TrainConfig.model_validate(TINY)
    tc = TuneConfig(n_trials=2, storage=f"sqlite:///{store}/optuna.db", study_name="s1")
    r1 = tune(frame, cfg, tc, track=True, out_dir=store / "out")
    assert len(r1.trials) == 2 and (store / "out" / "pareto.png").stat().st_size > 1000
    assert r1.trials["pareto"].any()
    assert r1.operating_point["rule"].startswith("max content NDCG")
    assert set(r1.operating_point["baseline"]) == {"content", "engagement", "content_only_cold"}
    first = r1.trials.set_index("number")[["content", "engagement"]]

    r2 = tune(frame, cfg, tc.model_copy(update={"n_trials": 3}), track=True)      # continues: one more trial
    assert list(r2.trials["number"]) == [0, 1, 2]
    assert np.allclose(r2.trials.set_index("number").loc[[0, 1], ["content", "engagement"]], first)
    r3 = tune(frame, cfg, tc.model_copy(update={"n_trials": 3}), track=False)     # finished: adds nothing
    assert len(r3.trials) == 3
    study = optuna.load_study(study_name="s1", storage=tc.storage)
    assert len(study.trials) == 3

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("ltr-tune-test").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == r1.parent_run_id]
    assert len(children) == 2 and all("ndcg_at_10" in r.data.metrics for r in children)
    parent_arts = {a.path for a in client.list_artifacts(r1.parent_run_id)}
    assert {"pareto.png", "operating_point.json", "trials.json"} <= parent_arts

    other = synthetic_training_frame(30, 10, seed=8)
    with pytest.raises(TuningError, match="different training frame"):
        tune(other, cfg, tc, track=False)


def test_build_arms_and_skips():
    cfg = ExperimentConfig(alpha_grid=[2.0, 8.0], beta_grid=[0.5])
    tuned = TunedParams(alpha=8, beta=0.5, blend_weight=0.6)
    cols = set(synthetic_training_frame(3, 3).columns)
    arms, skipped = build_arms(cfg, tuned, cols)
    groups = [a.group for a in arms]
    assert groups.count("a") == 3 and groups.count("b") == 2 and groups.count("e") == 2 and not skipped
    assert all("ce_purchase_score" in a.drop_columns for a in arms if a.name != "CE fine-tuned on purchases")
    arms, skipped = build_arms(cfg, tuned, cols - {"ce_score", "ce_purchase_score", "grade"})
    assert {s["group"] for s in skipped} == {"c", "d", "e"}
    with pytest.raises(Exception, match="seeds"):
        ExperimentConfig(seeds=[0, 1])


def test_run_experiments_table_and_json():
    cfg = ExperimentConfig.model_validate({"train": TINY, "arms": ["a", "d", "e"]})
    frames = {s: synthetic_training_frame(24, 10, seed=s) for s in (0, 1, 2)}
    md, js = run_experiments(frames, cfg, notes=["engagement is simulated"])
    names = [a["name"] for a in js["arms"]]
    assert names[:3] == ["engagement only", "LLM labels, no sigmoid", "LLM labels, tuned sigmoid"]
    assert "CE fine-tuned on purchases" in names and "label source: true grades" in names
    for a in js["arms"]:
        assert set(a["per_seed"]) == {"0", "1", "2"}
        vals = [a["per_seed"][s]["ndcg@10"] for s in ("0", "1", "2")]
        assert a["mean"]["ndcg@10"] == pytest.approx(np.mean(vals))
        assert a["std"]["ndcg@10"] == pytest.approx(np.std(vals, ddof=1))
        assert a["name"] in md
    by = {a["name"]: a for a in js["arms"]}
    assert by["label source: engagement"]["per_seed"] == by["engagement only"]["per_seed"]
    assert js["claim"] is not None and isinstance(js["claim"]["met"], bool)
    assert "engagement is simulated" in md and "± " in md
    json.dumps(js, allow_nan=False)                    # strict JSON
    # one frame for every seed: seeds vary the query split and the model seed
    _md1, js1 = run_experiments(frames[0], cfg.model_copy(update={"arms": ["a"]}))
    per_seed = js1["arms"][0]["per_seed"]
    assert len({round(v["ndcg@10"], 9) for v in per_seed.values()}) > 1
    with pytest.raises(ExperimentError, match="seed 2"):
        run_experiments({0: frames[0], 1: frames[1]}, cfg)
