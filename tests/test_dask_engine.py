"""Dask engine on a real LocalCluster (2 worker processes, 1 thread each): training, batch scoring, labelling.

- training: `DaskXGBLambdaMART` reaches the NDCG@10 of single-process `XGBLambdaMART` on the same data
  (within 0.005) and no query group is split across partitions;
- batch scoring: bi-encoder and cross-encoder scores over partitions equal the single-process ones
  (within 1e-5), each model loaded once per worker; a worker killed mid-job ends in the complete result;
- labelling: the grader over partitions, the API tier (a real local OpenAI-compatible server) in the
  driver: each pair's content is graded and paid once, and a re-run grades nothing.
- a worker killed (`os._exit`, by `kill_worker.kill_mid_task`) while it runs a scoring, labelling or
  training task: scoring and labelling complete with every row and the single-process values; training
  ends in one `RankerError` naming the lost worker, or a model of every row (slow: its own cluster in a
  child process, because XGBoost's tracker has been seen to abort the driver).
All tests share one module-scoped cluster (the kill tests wait for the restarted worker on exit).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from kill_worker import kill_mid_task
from openai_server import OpenAIServer
from test_crossencoder import TINY, tiny_world
from test_labels_grader import _tiny

from features.biencoder import score_pairs as bienc_score_pairs
from features.crossencoder import CrossEncoderScorer, fine_tune_cross_encoder
from features.crossencoder import score_pairs as ce_score_pairs
from features.distributed_scoring import model_loads, score_distributed
from labels.backends.base import Pair
from labels.backends.grader import FineTunedGrader, GraderBackend, GraderConfig
from labels.backends.openai import OpenAIBackend
from labels.cache import LabelCache
from labels.cascade import CascadeBackend, Tier
from labels.config import OpenAISettings
from labels.distributed import BackendSpec, PartitionedBackend, backend_builds
from ltr.dask_ranker import DaskXGBLambdaMART, group_layout, partition_dask_by_query
from ltr.data.engine import ComputeConfig, EngineError, current_client, dask_client
from ltr.data.metrics import ndcg_per_query
from ltr.rankers import XGBLambdaMART
from ltr.train import ranker_from_config
from ltr.train_config import TrainConfig


@pytest.fixture(scope="module")
def client():
    with dask_client(ComputeConfig(engine="dask", n_workers=2, threads_per_worker=1, memory_limit="3GiB")) as c:
        yield c


@pytest.fixture
def doomed_client():
    """A cluster of its own for a test that kills a worker: the nanny's restart has been seen to race with the
    scheduler's removal of the dead worker and close the nanny (1 CI run in ~20), which would leave the shared
    cluster one worker short for every later test. The kill tests check what the surviving worker finishes,
    not the restart."""
    with dask_client(ComputeConfig(engine="dask", n_workers=2, threads_per_worker=1, memory_limit="3GiB")) as c:
        yield c


def _ranking_data(n_queries: int, seed: int, group: int = 40, features: int = 8):
    rng = np.random.default_rng(seed)
    n = n_queries * group
    # features on a grid of ~60 values (like prices, counts, rounded scores): fewer distinct values than
    # max_bin, so the histogram cuts are exact in one process and on the cluster alike and the comparison
    # isolates what Dask changes (the data layout), not the quantile sketch's approximation
    X = (np.round(rng.standard_normal((n, features)) * 8) / 8).astype("float32")
    X[rng.random(X.shape) < 0.03] = np.nan
    w = rng.standard_normal(features)
    y = 1 / (1 + np.exp(-(np.nan_to_num(X) @ w / 2 + 0.5 * np.nan_to_num(X[:, 0] * X[:, 1]))))
    qid = np.repeat([f"q{seed}-{i:04d}" for i in range(n_queries)], group)
    perm = rng.permutation(n)  # rows arrive unsorted
    return pd.DataFrame(X[perm], columns=[f"f{i}" for i in range(features)]), y[perm], qid[perm]


def _ndcg(scores, y, qid) -> float:
    return float(np.nanmean(ndcg_per_query(pd.Series(qid), scores, np.clip(np.round(y * 3), 0, 3), 10)))


def _no_group_split(layout: pd.DataFrame) -> None:
    seen: set = set()
    for qids, ok in zip(layout["qids"], layout["sorted"]):
        assert ok, "a partition is not sorted by qid"
        assert not seen & set(qids), "a query group is split across partitions"
        seen |= set(qids)


def test_engine_config_is_strict_and_a_bad_address_is_one_clear_error():
    with pytest.raises(ValueError, match="both set"):
        ComputeConfig(engine="dask", scheduler_address="tcp://a:1", scheduler_file="s.json")
    with pytest.raises(ValueError):
        ComputeConfig(engine="spark")
    t = time.time()
    with pytest.raises(EngineError, match="compute.scheduler_address"):
        with dask_client(ComputeConfig(engine="dask", scheduler_address="tcp://127.0.0.1:9", connect_timeout_s=2)):
            pass
    assert time.time() - t < 30


def test_training_matches_single_process_and_keeps_groups_whole(client):
    Xa, ya, qa = _ranking_data(200, seed=0, group=30)
    test = qa >= "q0-0150"  # the last 50 queries are held out
    X, y, q = Xa[~test].reset_index(drop=True), ya[~test], qa[~test]
    Xt, yt, qt = Xa[test].reset_index(drop=True), ya[test], qa[test]
    params = dict(n_estimators=30, max_depth=4, early_stopping_rounds=None, validation_fraction=0.0)
    local = XGBLambdaMART(n_jobs=2, **params).fit(X, y, q)
    dask = DaskXGBLambdaMART(npartitions=5, **params).fit(X, y, q)
    assert len(dask.layout_) == 5 and dask.layout_["rows"].sum() == len(X)
    _no_group_split(dask.layout_)
    a, b = _ndcg(local.predict(Xt), yt, qt), _ndcg(dask.predict(Xt), yt, qt)
    print(f"NDCG@10 held out: single process {a:.4f}, Dask {b:.4f}")
    assert abs(a - b) <= 0.005, (a, b)
    assert a > _ndcg(np.random.default_rng(0).random(len(yt)), yt, qt) + 0.2  # both learnt the ranking
    # the same contract: params, a plain in-process booster (what MLflow logs), dask predictions
    assert dask.get_params()["npartitions"] == 5 and dask.model_.__class__.__name__ == "XGBRanker"
    import dask.dataframe as dd
    lazy = dask.predict(dd.from_pandas(Xt, npartitions=3)).compute()
    assert np.allclose(np.asarray(lazy), dask.predict(Xt), atol=1e-6)


def test_config_picks_the_dask_ranker_and_a_dask_frame_is_partitioned_by_query(client):
    cfg = TrainConfig.model_validate({"model": {"kind": "xgboost_dask", "n_estimators": 5}})
    r = ranker_from_config(cfg)
    assert isinstance(r, DaskXGBLambdaMART) and r.n_jobs is None  # each worker's own threads
    import dask.dataframe as dd
    X, y, q = _ranking_data(60, seed=2, group=20)
    ddf = dd.from_pandas(X.assign(label=y, query_id=q), npartitions=4)  # groups scattered over partitions
    _no_group_split(group_layout(partition_dask_by_query(ddf, "label", "query_id", 3)))
    m = DaskXGBLambdaMART(n_estimators=5, early_stopping_rounds=None).fit(ddf, "label", "query_id")
    _no_group_split(m.layout_)
    assert m.feature_names_ == list(X.columns) and np.isfinite(m.predict(X)).all()


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture(scope="module")
def ce_dir(world, tmp_path_factory):
    pairs, products, queries = world
    out = tmp_path_factory.mktemp("ce") / "model"
    fine_tune_cross_encoder(pairs, products, queries, out, TINY, seed=3, progress=False)
    return out


def test_batch_scores_equal_single_process_and_models_load_once_per_worker(client, world, ce_dir):
    pairs, products, queries = world
    pairs = pairs[["query_id", "product_id"]]
    for _round in range(2):  # the second round must load nothing new
        bi = score_distributed(pairs, products, queries, "bienc", client=client, npartitions=4)
        ce = score_distributed(pairs, products, queries, "ce", ce_dir, client=client, npartitions=4)
    ref_bi = bienc_score_pairs(pairs, products, queries)
    ref_ce = ce_score_pairs(pairs, products, queries, CrossEncoderScorer(ce_dir))
    assert np.abs(bi["bienc_cos"].to_numpy() - ref_bi["bienc_cos"].to_numpy()).max() <= 1e-5
    assert np.abs(ce["ce_score"].to_numpy() - ref_ce["ce_score"].to_numpy()).max() <= 1e-5
    assert (bi[["query_id", "product_id"]].to_numpy() == pairs.to_numpy()).all()
    for pid_loads in client.run(model_loads).values():
        kinds = [x[1] for x in pid_loads]
        assert kinds.count("bienc") <= 1 and kinds.count("ce") <= 1, pid_loads


@pytest.fixture(scope="module")
def grader_dir(tmp_path_factory):
    qs, ps, gs = _tiny()
    return FineTunedGrader(config=GraderConfig(progress=False, inner_folds=2)).fit(qs, ps, gs).save(
        tmp_path_factory.mktemp("grader") / "g")


def test_labelling_over_partitions_pays_no_pair_twice(client, grader_dir, tmp_path):
    gdir = grader_dir
    qs, ps, _ = _tiny()  # 16 distinct (query text, product) contents, each under 3 (query_id, product_id) rows
    contents = list(zip(qs, ps))
    pairs = [Pair(f"{q}#{copy}", q, f"P{i}-{copy}", p) for copy in range(3) for i, (q, p) in enumerate(contents)]
    with OpenAIServer() as srv:
        api = OpenAIBackend(OpenAISettings(base_url=srv.base_url, model="local-test", api_key="sk-test",
                                           concurrency=4, requests_per_second=200.0))
        cache = LabelCache(tmp_path / "cache.sqlite")
        local = PartitionedBackend(BackendSpec.of(GraderBackend, grader_dir=str(gdir), progress=False), client,
                                   npartitions=4)
        sent: list[Pair] = []
        grade = local.grade
        local.grade = lambda ps, on_result=None: (sent.extend(ps), grade(ps, on_result))[1]
        cascade = CascadeBackend([Tier(local, escalate_if_margin_below=1.01), Tier(api)], cache)  # escalate all
        first = cascade.grade(pairs)
        assert len(first) == len(pairs) and {r.backend for r in first} == {"cascade/openai"}
        assert len(sent) == len(contents) == len({(p.query, p.text_hash) for p in sent})  # once per content
        assert sorted(srv.per_prompt.values()) == [1] * len(contents)  # the API answered (billed) once each
        sent.clear()
        assert len(cascade.grade(pairs)) == len(pairs)
        assert sent == [] and sum(srv.per_prompt.values()) == len(contents)  # a re-run pays nothing
        cache.close()
    builds = [b for bs in client.run(backend_builds).values() for b in bs]
    assert len(builds) <= 2 and len({b[0] for b in builds}) == len(builds)  # one grader per worker at most


def _copies(world, k: int):
    """`k` copies of the tiny world's pairs under new query texts: nothing memoised, real work to do."""
    base, products, queries = world
    pairs = pd.concat([base[["query_id", "product_id"]].assign(query_id=base["query_id"] + f"-{i}")
                       for i in range(k)], ignore_index=True)
    queries = pd.concat([queries.assign(query_id=queries["query_id"] + f"-{i}", query=queries["query"] + f" {i}")
                         for i in range(k)], ignore_index=True)
    return pairs, products, queries


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_scoring_ends_in_the_complete_result(doomed_client, world, tmp_path):
    client = doomed_client
    pairs, products, queries = _copies(world, 8)  # enough per partition that a quiet machine is still scoring
    with kill_mid_task(client, "score_partition", tmp_path / "killed", delay_s=0.0, n_workers=0) as flag:
        out = score_distributed(pairs, products, queries, "bienc", client=client, npartitions=4)
    assert flag.read_text() == "mid-task"  # a worker died while it scored a partition
    assert len(out) == len(pairs)  # score_distributed also checks every (query_id, product_id) row, in order
    ref = bienc_score_pairs(pairs, products, queries)
    assert np.abs(out["bienc_cos"].to_numpy() - ref["bienc_cos"].to_numpy()).max() <= 1e-5
    assert current_client() is client


@pytest.mark.slow  # own cluster + two fits in a child: 53 s at load 7, 110 s at load 11; fails if XGBoost aborts
@pytest.mark.timeout(300)
def test_a_worker_killed_mid_training_ends_in_a_clear_error_never_a_partial_model(tmp_path):
    """In a child process with its own cluster (see `kill_worker.train_with_a_killed_worker` for why)."""
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("kill_worker.py")), str(tmp_path)],
                       capture_output=True, text=True, timeout=280, env=os.environ | {"PYTHONPATH": os.getcwd()})
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"the driver died (exit {p.returncode}): {p.stderr[-1500:]}"
    out = json.loads(lines[-1][7:])
    assert out["kill"] == "mid-task"  # a worker died while it trained
    first = out["first"]
    if "error" in first:  # XGBoost's collective cannot lose a member: the clear error we promise
        assert "lost worker" in first["error"] and "Fix: re-run" in first["error"], first
    else:  # or a model trained on every row
        assert first == {"rows": out["input_rows"], "trees": 300}, first
    assert out["again"] == {"rows": out["input_rows"], "trees": 5}  # the fix the message names works


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_labelling_ends_with_every_pair_graded(doomed_client, grader_dir, tmp_path):
    client = doomed_client
    qs, ps, _ = _tiny()  # 4 copies under new query texts: embeddings to compute, so a partition takes a while
    pairs = [Pair(f"q{i}-{k}", f"{q} {k}", f"p{i}", p) for k in range(4) for i, (q, p) in enumerate(zip(qs, ps))]
    backend = PartitionedBackend(BackendSpec.of(GraderBackend, grader_dir=str(grader_dir), progress=False),
                                 client, npartitions=4)
    with kill_mid_task(client, "grade_partition", tmp_path / "killed", delay_s=0.01, n_workers=0) as flag:
        got = backend.grade(pairs)  # LabelerError would be the other acceptable end
    assert flag.read_text() == "mid-task"
    assert sorted((r.query_id, r.product_id) for r in got) == sorted((p.query_id, p.product_id) for p in pairs)
    ref = GraderBackend(grader_dir, progress=False).grade(pairs)
    by_id = {(r.query_id, r.product_id): r.probs for r in got}
    assert max(abs(a - b) for r in ref for a, b in zip(r.probs, by_id[(r.query_id, r.product_id)])) <= 1e-5
