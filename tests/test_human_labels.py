"""Human corrections (labels.human, issue 30): the store keeps every click with its provenance, refuses bad input
naming the field, survives concurrent writers and a writer killed mid-transaction, exports a judgments file,
and a correction changes the training labels of the next `ltr run` into the same out dir."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from labels.human import HumanLabelError, HumanLabels, human_store_path, override_labels
from ltr.cli import app as cli
from ltr.data.dataset import read_table
from ltr.data.schemas import JUDGMENTS, query_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with HumanLabels(tmp_path / "human.sqlite", known_products={"p1", "p2", "p3"}) as s:
        yield s


# --- validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field", [
    ({"grade": 4}, "grade"), ({"grade": -1}, "grade"), ({"grade": 2.5}, "grade"), ({"grade": True}, "grade"),
    ({"grade": "E"}, "grade"), ({"grade": None}, "grade"), ({"who": "  "}, "who"), ({"who": None}, "who"),
    ({"query": ""}, "query"), ({"query": 7}, "query"), ({"product_id": "p404"}, "product_id"),
    ({"product_id": ""}, "product_id"), ({"replaces": 3.5}, "replaces"), ({"replaces": "2"}, "replaces"),
    ({"note": "x" * 2001}, "note"),
])
def test_a_bad_correction_is_refused_naming_the_field(store, bad, field):
    kw = {"query": "red shoes", "product_id": "p1", "grade": 2, "who": "ana"} | bad
    with pytest.raises(HumanLabelError) as e:
        store.add(**kw)
    assert e.value.field == field and str(e.value).startswith(f"{field}:") and "Fix:" in str(e.value)
    assert store.state()["rows"] == 0  # nothing half-stored


def test_grades_as_a_page_sends_them_and_the_catalog_given_per_call(store):
    assert store.add("red shoes", "p1", "3", who="ana")["grade"] == 3
    assert store.add("red shoes", "p1", 0.0, who="ana")["grade"] == 0
    assert store.add("red shoes", "p9", 1, who="ana", known_products={"p9"})["product_id"] == "p9"
    with pytest.raises(HumanLabelError, match="product_id"):
        store.add("red shoes", "p1", 1, who="ana", known_products={"p9"})


# --- provenance: latest wins, history keeps all -----------------------------------------------------------

def test_a_correction_replaces_an_earlier_one_in_latest_and_both_stay_in_history(store):
    a = store.add("Red Shoes", "p1", 1, who="ana", replaces=2.4, replaces_source="llm:grader@v1", note="a sandal")
    b = store.add("red  shoes", "p1", 3, who="bo")
    store.add("red shoes", "p2", 0, who="bo")
    assert a["query_id"] == b["query_id"] == query_id("red shoes")
    hist = store.history(query_id=query_id("red shoes"), product_id="p1")
    assert hist["id"].tolist() == [a["id"], b["id"]] and hist["grade"].tolist() == [1, 3]
    assert hist["replaces"].tolist() == [2.4, 1.0] and hist["replaces_source"].tolist() == ["llm:grader@v1", "human"]
    assert hist["at"].is_monotonic_increasing and str(hist["at"].dt.tz) == "UTC"
    lat = store.latest().set_index("product_id")
    assert lat.loc["p1", "grade"] == 3 and lat.loc["p1", "who"] == "bo" and len(lat) == 2
    assert len(store.history()) == 3 and store.state() == {"rows": 3, "last_id": 3}


def test_export_round_trips_through_the_judgments_reader(store, tmp_path):
    store.add("red shoes", "p1", 1, who="ana")
    store.add("red shoes", "p1", 3, who="bo", note="exact")
    store.add("blue hat", "p2", 0, who="ana", replaces=2.0, replaces_source="llm:gpt-4o-mini@umbrela-esci-v1")
    back = read_table(store.export(tmp_path / "out" / "human.parquet"), JUDGMENTS).sort_values("query")
    assert back[["query", "product_id", "grade"]].values.tolist() == [["blue hat", "p2", 0], ["red shoes", "p1", 3]]
    assert back["query_id"].tolist() == [query_id("blue hat"), query_id("red shoes")]
    assert back["who"].tolist() == ["ana", "bo"] and back["note"].tolist() == [None, "exact"]
    assert back["replaces_source"].tolist() == ["llm:gpt-4o-mini@umbrela-esci-v1", "human"]


# --- concurrency and crashes -----------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from labels.human import HumanLabels
    path, who, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = HumanLabels(path)
    while time.time() < start:
        pass
    for i in range(n):
        s.add(f"query {i % 7}", f"p{i}", i % 4, who=who)
""")


def test_two_processes_correcting_at_once_both_land(tmp_path):
    path = tmp_path / "human.sqlite"
    HumanLabels(path).close()
    start = str(time.time() + 3)  # both past their imports, then writing at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, "100", start], cwd=REPO)
             for who in ("ana", "bo")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with HumanLabels(path) as s:
        h = s.history()
    assert len(h) == 200 and h["id"].is_unique
    assert h.groupby("who")["product_id"].nunique().to_dict() == {"ana": 100, "bo": 100}


def test_two_threads_sharing_one_store_both_land(store):
    def write(who):
        for i in range(100):
            store.add(f"query {i % 5}", "p1" if i % 2 else "p2", i % 4, who=who)
    ts = [threading.Thread(target=write, args=(w,)) for w in ("ana", "bo")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    h = store.history()
    assert len(h) == 200 and h["who"].value_counts().to_dict() == {"ana": 100, "bo": 100}
    # every correction after the first of its pair says what it replaced: the lookup sits inside the transaction
    first = h.groupby(["query_id", "product_id"])["id"].transform("min") == h["id"]
    assert h.loc[~first, "replaces_source"].eq("human").all() and h.loc[first, "replaces"].isna().all()


class _DiesAfterInsert:
    """The connection, except that the INSERT of a correction is followed by `die()` before the COMMIT."""

    def __init__(self, db, die):
        self.db, self.die = db, die

    def execute(self, sql, *a):
        cur = self.db.execute(sql, *a)
        if sql.startswith("INSERT"):
            self.die()
        return cur

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_an_error_mid_transaction_rolls_back_that_correction_only(store):
    for i in range(5):
        store.add("red shoes", "p1", i % 4, who="ana")
    db = store._db
    store._db = _DiesAfterInsert(db, lambda: (_ for _ in ()).throw(RuntimeError("disk went away")))
    with pytest.raises(RuntimeError):
        store.add("red shoes", "p2", 3, who="bo")
    store._db = db
    assert store.state() == {"rows": 5, "last_id": 5} and "p2" not in set(store.history()["product_id"])
    assert store.add("red shoes", "p2", 3, who="bo")["id"] == 6  # the store is not left locked


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from labels.human import HumanLabels

    class Dies:  # the INSERT of the next correction, then SIGKILL before its COMMIT
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *a):
            cur = self.db.execute(sql, *a)
            if sql.startswith("INSERT"):
                os.kill(os.getpid(), signal.SIGKILL)
            return cur

    s = HumanLabels(sys.argv[1])
    for i in range(50):
        s.add("red shoes", f"p{i}", i % 4, who="ana")
    s._db = Dies(s._db)
    s.add("red shoes", "p_lost", 3, who="ana")
""")


def test_a_writer_killed_mid_correction_loses_no_earlier_correction(tmp_path):
    path = tmp_path / "human.sqlite"
    p = subprocess.run([sys.executable, "-c", _KILLED, str(path)], cwd=REPO, timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with HumanLabels(path) as s:
        h = s.history()
        assert len(h) == 50 and "p_lost" not in set(h["product_id"])
        assert s.add("red shoes", "p_after", 1, who="bo")["id"] == 51


# --- how corrections win -----------------------------------------------------------------------------------

def _labels(pairs):
    ts = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({"query_id": [q for q, _, _ in pairs], "product_id": [p for _, p, _ in pairs],
                         "score": [s for _, _, s in pairs], "p0": 0.25, "p1": 0.25, "p2": 0.25, "p3": 0.25,
                         "backend": "grader", "model": "g", "prompt_version": "v", "cost": 0.0, "created_at": ts})


def test_override_labels_counts_what_changed_and_what_is_not_a_candidate(store):
    qa, qb = query_id("red shoes"), query_id("blue hat")
    labels = _labels([(qa, "p1", 0.2), (qa, "p2", 1.0), (qb, "p1", 0.5)])
    cand = pd.DataFrame({"query_id": [qa, qa, qb, qb], "product_id": ["p1", "p2", "p1", "p3"]})
    store.add("red shoes", "p1", 3, who="ana")   # changes 0.2 -> 1
    store.add("red shoes", "p2", 3, who="ana")   # confirms 1.0
    store.add("blue hat", "p3", 2, who="bo")     # a candidate the labeler left ungraded
    store.add("blue hat", "p2", 1, who="bo")     # not a candidate of this run
    out, counts = override_labels(labels, store.latest(), cand)
    assert counts == {"corrections": 4, "applied": 3, "changed": 2, "added": 1, "not_in_candidates": 1}
    o = out.set_index(["query_id", "product_id"])
    assert o.loc[(qa, "p1"), "score"] == 1.0 and o.loc[(qa, "p1"), "backend"] == "human"
    assert o.loc[(qa, "p1"), "model"] == "ana" and o.loc[(qa, "p1"), "p3"] == 1.0
    assert o.loc[(qb, "p3"), "score"] == pytest.approx(2 / 3) and o.loc[(qb, "p1"), "backend"] == "grader"
    assert (qb, "p2") not in o.index and len(out) == 4


def test_a_dataset_with_its_own_query_ids_is_matched_by_query_text(store):
    labels = _labels([("Q1", "p1", 0.0)])
    store.add("Red  Shoes", "p1", 3, who="ana")
    queries = pd.DataFrame({"query_id": ["Q1"], "query": ["red shoes"]})
    out, counts = override_labels(labels, store.latest(), pd.DataFrame({"query_id": ["Q1"], "product_id": ["p1"]}),
                                  queries)
    assert counts["changed"] == 1 and out["score"].tolist() == [1.0] and out["query_id"].tolist() == ["Q1"]


# --- the commands --------------------------------------------------------------------------------------

def test_export_without_human_is_refused_saying_what_exists(tmp_path):
    run = tmp_path / "run"
    with HumanLabels(human_store_path(run)) as s:
        s.add("red shoes", "p1", 2, who="ana")
    res = CliRunner().invoke(cli, ["labels", "export", "--run-dir", str(run), "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and "--human" in res.output and "labels.parquet" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x.parquet").exists()
    res = CliRunner().invoke(cli, ["labels", "history", "--run-dir", str(tmp_path / "none")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_history_of_a_query_by_its_text(tmp_path):
    run = tmp_path / "run"
    with HumanLabels(human_store_path(run)) as s:
        s.add("red shoes", "p1", 2, who="ana")
        s.add("blue hat", "p1", 0, who="zed")
    res = CliRunner().invoke(cli, ["labels", "history", "--run-dir", str(run), "--query", "Red Shoes"])
    assert res.exit_code == 0 and "ana" in res.output and "zed" not in res.output


# --- end to end: a correction reaches the next `ltr run`'s training frame ---------------------------------

def _run(root: Path, out: Path) -> None:
    from ltr.cli import app
    res = CliRunner().invoke(app, ["run", "--config", str(root / "run.yaml"), "--out", str(out),
                                   "--skip-experiments"])
    assert res.exit_code == 0, res.output[-3000:]


def _pick(run: Path) -> tuple[dict, dict, dict]:
    """(an unjudged candidate pair, a judged one, a catalog product that is no candidate of that query)."""
    lab = pd.read_parquet(run / "labels" / "labels.parquet")
    qtext = dict(pd.read_parquet(run / "dataset" / "queries.parquet")[["query_id", "query"]].values)
    jud = pd.read_parquet(run / "dataset" / "judgments.parquet")
    judged = lab.set_index(["query_id", "product_id"]).index.isin(jud.set_index(["query_id", "product_id"]).index)

    def corr(row):
        return {"query": qtext[row["query_id"]], "product_id": row["product_id"], "query_id": row["query_id"],
                "grade": 0 if row["score"] > 0.5 else 3, "old": row["score"]}
    free = corr(lab[~judged].iloc[0])
    prods = set(pd.read_parquet(run / "dataset" / "products.parquet")["product_id"])
    outside = sorted(prods - set(lab.loc[lab["query_id"] == free["query_id"], "product_id"]))[0]
    return free, corr(lab[judged].iloc[0]), {**free, "product_id": outside, "grade": 2}


def test_a_correction_changes_the_next_runs_training_labels_and_is_exported(tmp_path):
    from labels.human import run_products
    from ltr.data.config import load_config
    from ltr.pipeline import RunPaths, stage_labels
    from ltr.run_config import RunConfig
    from ltr.serving.demo import save_encoder
    save_encoder(tmp_path / "tiny_ce", tiny=True)
    cfg = yaml.safe_load((REPO / "tests" / "fixtures" / "loop_run.yaml").read_text())
    cfg["cross_encoder"]["base_model"] = str(tmp_path / "tiny_ce")
    cfg["tune"]["storage"] = f"sqlite:///{tmp_path}/optuna.db"
    # the labels path of the loop's run; tracking off and fewer trees halve its time (the model is not the point)
    cfg["tracking"] = {**cfg["tracking"], "uri": f"sqlite:///{tmp_path}/mlflow.db", "enabled": False}
    cfg["train"]["model"]["n_estimators"] = 20
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    _run(tmp_path, run)
    before = pd.read_parquet(run / "training_frame.parquet").set_index(["query_id", "product_id"])
    labels1 = pd.read_parquet(run / "labels" / "labels.parquet")
    free, judged, outside = _pick(run)
    with HumanLabels(human_store_path(run), known_products=run_products(run)) as s:
        for c in (free, judged, outside):
            s.add(c["query"], c["product_id"], c["grade"], who="ana", replaces=c["old"] * 3,
                  replaces_source="llm:grader")
    _run(tmp_path, run)

    summary = json.loads((run / "labels" / "labels.summary.json").read_text())["human"]
    assert {k: summary[k] for k in ("corrections", "applied", "changed", "not_in_candidates")} == \
        {"corrections": 3, "applied": 2, "changed": 2, "not_in_candidates": 1}
    lab = pd.read_parquet(run / "labels" / "labels.parquet").set_index(["query_id", "product_id"])
    for c in (free, judged):
        row = lab.loc[(c["query_id"], c["product_id"])]
        assert row["backend"] == "human" and row["model"] == "ana" and row["score"] == pytest.approx(c["grade"] / 3)
    # the labeler did not grade again: its own table is the first run's labels
    pd.testing.assert_frame_equal(pd.read_parquet(run / "labels" / "labels.labeler.parquet"), labels1)
    after = pd.read_parquet(run / "training_frame.parquet").set_index(["query_id", "product_id"])
    pair = (free["query_id"], free["product_id"])
    assert before.loc[pair, "content_score"] == pytest.approx(free["old"])
    assert after.loc[pair, "content_score"] == pytest.approx(free["grade"] / 3)
    # a correction of a pair the dataset's raters judged wins too: it is the later human label
    assert after.loc[(judged["query_id"], judged["product_id"]), "content_score"] == pytest.approx(judged["grade"] / 3)
    others = after.index.difference([pair, (judged["query_id"], judged["product_id"])])
    pd.testing.assert_series_equal(after.loc[others, "content_score"], before.loc[others, "content_score"])

    mtime = (run / "labels" / "labels.parquet").stat().st_mtime_ns  # nothing new: the stage is up to date
    stage_labels(load_config(tmp_path / "run.yaml", RunConfig), RunPaths(run), run / "dataset")
    assert (run / "labels" / "labels.parquet").stat().st_mtime_ns == mtime

    res = CliRunner().invoke(cli, ["labels", "export", "--run-dir", str(run), "--human", "--out",
                                          str(tmp_path / "human.parquet")])
    assert res.exit_code == 0, res.output
    exp = read_table(tmp_path / "human.parquet", JUDGMENTS).set_index(["query", "product_id"])
    assert len(exp) == 3 and exp.loc[(free["query"], free["product_id"]), "grade"] == free["grade"]
    assert exp.loc[(outside["query"], outside["product_id"]), "grade"] == 2
