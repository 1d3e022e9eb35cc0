"""The relevance workbench's server side (ltr/serving/workbench), in process: what the page and its JSON
show, the one write it allows and everything it refuses. On a real tiny run (`ltr run` twice: v1 champion,
v2 challenger, 4 Optuna trials) built once per test session and shared with tests/test_workbench_browser.py;
two catalog titles are XSS strings, served from the catalog frame (the run's files are left as written)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ltr.data.metrics import ndcg_per_query
from ltr.data.schemas import query_id

TOKEN = "test-token-1234"
XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
_BUILT: dict = {}


def demo_run(tmp_path_factory) -> dict:
    """The run, built once per session whichever test file asks first."""
    if not _BUILT:
        from ltr.serving.workbench.demo import build_demo_run

        root = tmp_path_factory.getbasetemp() / "workbench-run"
        mp = pytest.MonkeyPatch()
        mp.setenv("LTR_MODEL_CACHE", str(root / "model-cache"))  # kept for the session: the apps load from it
        _BUILT.update(build_demo_run(root, "ltr-workbench-test"))
        _BUILT["root"] = root
    return _BUILT


def xss_catalog(run: Path) -> tuple[pd.DataFrame, str, list[str]]:
    """The catalog with two judged products of the first judged query retitled as XSS strings."""
    prods = pd.read_parquet(run / "dataset" / "products.parquet")
    j = pd.read_parquet(run / "dataset" / "judgments.parquet")
    q = sorted(j["query"].unique())[0]
    pids = list(j.loc[j["query"] == q, "product_id"])[:2]
    for pid, title in zip(pids, XSS):
        prods.loc[prods["product_id"] == pid, "title"] = title
    return prods, q, pids


def make_app(built: dict, token: str | None = TOKEN, challenger: bool = True):
    from ltr import tracking as T
    from ltr.serving.app import create_app
    from ltr.serving.workbench import mount_workbench

    run = built["run_dir"]
    prods, q, pids = xss_catalog(run)
    with T.using_tracking(built["tracking"], "ltr-workbench"):
        app = create_app(built["champion"], run / "features", prods, tracking_uri=built["tracking"],
                         challenger=built["challenger"] if challenger else None, precompute_embeddings=False,
                         log_dir=run / "served_logs", serving={"reload_poll_s": 0})
    wb = mount_workbench(app, app.state.service, run_dir=run, token=token)
    return app, wb, q, pids


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    built = demo_run(tmp_path_factory)
    app, wb, q, pids = make_app(built)
    with TestClient(app) as c:
        yield {"client": c, "app": app, "wb": wb, "query": q, "xss": pids, **built}


def compare(bench, right="challenger", query=None):
    r = bench["client"].get("/workbench/api/compare", params={"query": query or bench["query"], "right": right})
    assert r.status_code == 200, r.text
    return r.json()


def post(bench, body, token=TOKEN):
    return bench["client"].post("/workbench/api/labels", json=body,
                                headers={"X-Workbench-Token": token} if token else {})


def test_the_page_shows_champion_and_challenger_with_safe_headers(bench):
    r = bench["client"].get("/workbench", params={"query": bench["query"], "right": "challenger"})
    assert r.status_code == 200
    html = r.text
    assert 'data-side="champion"' in html and 'data-side="challenger"' in html
    assert html.count('class="result"') == 2 * compare(bench)["n_candidates"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert "http://" not in html.split("<body")[0] and "https://" not in html.split("<body")[0]  # no CDN


def test_catalog_strings_are_escaped_in_the_html(bench):
    html = bench["client"].get("/workbench", params={"query": bench["query"]}).text
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_both_sides_are_explained_and_add_up_to_their_scores(bench):
    d = compare(bench)
    assert d["left"]["version"] == "1" and d["right_side"]["version"] == "2"
    for side in (d["left"], d["right_side"]):
        for it in side["results"]:
            e = it["explain"]
            assert abs(e["bias"] + sum(e["contributions"].values()) - it["score"]) < 1e-5
            assert abs(e["bias"] + sum(b["value"] for b in it["bars"]) - it["score"]) < 1e-5  # what is drawn
            assert abs(sum(e["groups"].values()) - sum(e["contributions"].values())) < 1e-9


def test_half_blend_reproduces_the_served_order(bench):
    for it in compare(bench)["left"]["results"]:
        g = it["explain"]["groups"]
        w = 0.5
        what_if = it["explain"]["bias"] + 2 * (1 - w) * g["content"] + 2 * w * g["engagement"] + g["product"]
        assert abs(what_if - it["score"]) < 1e-5


def test_ndcg_and_moves_are_those_of_the_two_orders(bench):
    d = compare(bench, "bienc")
    grades = {p: h["grade"] for p, h in bench["wb"].human(query_id(bench["query"])).items()}
    for side in (d["left"], d["right_side"]):
        order = [it["product_id"] for it in side["results"]]
        g = [grades.get(p, np.nan) for p in order]
        want = ndcg_per_query(["q"] * len(order), -np.arange(len(order), dtype=float), g, k=10).iloc[0]
        assert math.isclose(side["ndcg10"], round(want, 4))
    left = [it["product_id"] for it in d["left"]["results"]]
    bienc = [it["score"] for it in d["right_side"]["results"]]
    assert bienc == sorted(bienc, reverse=True)  # the zero-shot bi-encoder: its cosine, best first
    for n, it in enumerate(d["right_side"]["results"], 1):
        assert it["move"] == left.index(it["product_id"]) + 1 - n


def test_results_carry_grades_llm_scores_and_engagement(bench):
    run = bench["run_dir"]
    labels = pd.read_parquet(run / "labels" / "labels.parquet").set_index(["query_id", "product_id"])
    qid = query_id(bench["query"])
    for it in compare(bench)["left"]["results"]:
        if (qid, it["product_id"]) in labels.index:
            row = labels.loc[(qid, it["product_id"])]
            assert it["llm_grade"] == int(row["grade"]) and math.isclose(it["llm_score"], row["score"])
            assert 0 <= it["polarized"] <= 1
        assert set(it["engagement"]) == {"impressions", "clicks", "carts", "purchases"}


def test_the_query_lists_say_where_to_look_first(bench):
    t = bench["client"].get("/workbench/api/queries").json()
    assert set(t) == {"disagreement", "ndcg_loss", "low_grade_clicks"}
    d = t["disagreement"]
    assert d and [r["disagreement"] for r in d] == sorted((r["disagreement"] for r in d), reverse=True)
    run = bench["run_dir"]
    j = pd.read_parquet(run / "dataset" / "judgments.parquet")
    llm = pd.read_parquet(run / "labels" / "labels.parquet")
    m = j.merge(llm, on=["query_id", "product_id"], suffixes=("_h", "_l"))
    top = d[0]
    pairs = m[m["query_id"] == top["query_id"]]
    assert math.isclose(top["disagreement"], round((pairs["grade_h"] - pairs["grade_l"]).abs().mean(), 3))
    assert all(r["ndcg_loss"] > 0 for r in t["ndcg_loss"]) and all(r["low_grade_clicks"] > 0 for r in
                                                                     t["low_grade_clicks"])


def test_a_query_the_run_never_saw_is_retrieved_from_the_catalog(bench):
    d = compare(bench, "bm25", query="waterproof hiking boots")
    assert d["n_candidates"] > 0 and not d["judged"] and d["left"]["ndcg10"] is None


def test_the_pareto_front_is_the_tuning_studys(bench):
    p = bench["client"].get("/workbench/api/pareto").json()
    trials = pd.read_csv(bench["run_dir"] / "reports" / "trials.csv")
    assert len(p["points"]) == len(trials) >= 2 and sum(x["pareto"] for x in p["points"]) == trials["pareto"].sum()
    assert p["operating_blend"] is not None


@pytest.mark.parametrize("field,body", [
    ("grade", {"grade": 7}), ("grade", {"grade": "3"}), ("grade", {"grade": 1.5}), ("grade", {"grade": True}),
    ("grade", {"grade": None}), ("product_id", {"product_id": "no-such-product"}),
    ("product_id", {"product_id": "../../etc/passwd"}), ("query", {"query": ""}), ("query", {"query": "   "}),
    ("who", {"who": "x" * 101}), ("extra", {"extra": 1})])
def test_bad_corrections_are_refused_naming_the_field(bench, field, body):
    store = bench["wb"].store
    before = store.state()
    ok = {"query": bench["query"], "product_id": bench["xss"][0], "grade": 2}
    r = post(bench, {**ok, **body})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == field
    assert store.state() == before


@pytest.mark.parametrize("field,params", [("right", {"right": "nope"}), ("query", {"query": ""}),
                                          ("n", {"n": 0}), ("n", {"n": 10_000})])
def test_bad_views_are_refused_naming_the_field(bench, field, params):
    r = bench["client"].get("/workbench/api/compare", params={"query": bench["query"], **params})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize("token,status", [(None, 401), ("wrong-token", 403), ("", 401)])
def test_a_write_without_the_token_is_refused_and_changes_nothing(bench, token, status):
    store = bench["wb"].store
    before = store.state()
    r = post(bench, {"query": bench["query"], "product_id": bench["xss"][0], "grade": 0}, token=token)
    assert r.status_code == status and r.json()["detail"][0]["loc"] == ["header", "X-Workbench-Token"]
    assert store.state() == before


def test_without_a_token_the_workbench_is_read_only(bench, monkeypatch):
    from ltr.serving.workbench import Workbench

    monkeypatch.delenv("LTR_WORKBENCH_TOKEN", raising=False)
    ro = Workbench(bench["app"].state.service, bench["run_dir"], token=None)
    assert not ro.writable and not ro.token_ok("anything") and not ro.token_ok(None)
    monkeypatch.setenv("LTR_WORKBENCH_TOKEN", "from-env")
    assert Workbench(bench["app"].state.service, bench["run_dir"]).token_ok("from-env")


def test_a_correction_is_stored_with_provenance_and_shown(bench):
    q, pid = bench["query"], bench["xss"][1]
    shown = {it["product_id"]: it for it in compare(bench)["left"]["results"]}[pid]
    r = post(bench, {"query": q, "product_id": pid, "grade": 1, "who": "ana", "note": "a sock, not a shoe"})
    assert r.status_code == 200, r.text
    rec = r.json()["stored"]
    want = shown["human"]["grade"] if shown["human"] else shown["llm_grade"]
    assert rec["grade"] == 1 and rec["who"] == "workbench:ana" and rec["replaces"] == want
    assert rec["replaces_source"] in {"judgments", "human", "llm"}
    after = {it["product_id"]: it for it in compare(bench)["left"]["results"]}[pid]
    assert after["human"]["grade"] == 1 and after["human"]["source"] == "human"
    hist = bench["wb"].store.history(query_id(q), pid)
    assert hist.iloc[-1]["note"] == "a sock, not a shoe" and hist.iloc[-1]["who"] == "workbench:ana"


class _FailingInsert:
    """A label store connection that dies in the middle of the INSERT, as a crash would."""

    def __init__(self, db) -> None:
        self.db = db

    def execute(self, sql, *a):
        if sql.startswith("INSERT"):
            raise OSError("disk vanished mid-correction")
        return self.db.execute(sql, *a)


def test_a_crash_mid_correction_loses_no_earlier_correction(bench):
    from labels.human import HumanLabels

    q, (a, b) = bench["query"], bench["xss"]
    store = bench["wb"].store
    assert post(bench, {"query": q, "product_id": a, "grade": 3}).status_code == 200
    n = store.state()["rows"]
    store._db = _FailingInsert(store._db)
    try:
        with TestClient(bench["app"], raise_server_exceptions=False) as c:
            r = c.post("/workbench/api/labels", json={"query": q, "product_id": b, "grade": 0},
                       headers={"X-Workbench-Token": TOKEN})
        assert r.status_code >= 500
    finally:
        store._db = store._db.db
    fresh = HumanLabels(store.path)  # as the next process would read it
    assert fresh.state()["rows"] == n
    last = fresh.latest().set_index("product_id").loc[a]
    assert int(last["grade"]) == 3
    fresh.close()


def test_nothing_but_the_label_store_is_written(bench):
    """Views and writes, hostile ones included: every file of the run and the tracking store unchanged,
    the served-feature log empty (workbench views are not shoppers' searches), but for the label store."""
    root = bench["root"]
    skip = ("model-cache",)

    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
                and not p.name.startswith("human.sqlite") and not str(p.relative_to(root)).startswith(skip)}

    before = snapshot()
    c = bench["client"]
    for q in (bench["query"], "../../../etc/passwd", "<script>alert(1)</script>"):
        c.get("/workbench", params={"query": q})
        c.get("/workbench/api/compare", params={"query": q, "right": "bm25"})
    for body in ({"query": bench["query"], "product_id": bench["xss"][0], "grade": 2},
                 {"query": "../../x", "product_id": "../../../tmp/x", "grade": 2},
                 {"query": bench["query"], "product_id": bench["xss"][0], "grade": 2, "path": "/tmp/x"}):
        post(bench, body)
    assert snapshot() == before
    assert not any((bench["run_dir"] / "served_logs").glob("**/*.parquet"))


def test_static_assets_are_served_from_the_package(bench):
    c = bench["client"]
    js = c.get("/workbench/static/workbench.js")
    assert js.status_code == 200 and "innerHTML" not in js.text
    plotly = c.get("/workbench/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert c.get("/workbench/static/../router.py").status_code == 404


def test_ltr_workbench_builds_the_service_for_a_run_on_loopback(bench, monkeypatch, capsys):
    """`ltr workbench --run-dir D` (ltr.serving.workbench.serve): the run's model and its @challenger, no
    served log, the token only in the printed address's fragment."""
    import uvicorn

    from ltr import tracking as T
    from ltr.serving.workbench.serve import is_loopback, open_workbench, page_url

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    with T.using_tracking(bench["tracking"], "ltr-workbench"):
        open_workbench(bench["run_dir"], token="generate", tracking_uri=bench["tracking"],
                       precompute_embeddings=False)
    state = seen["app"].state.service
    assert seen["host"] == "127.0.0.1" and state.served_log is None and state.challenger.version == "2"
    assert "/workbench#token=" in capsys.readouterr().out
    assert page_url("127.0.0.1", 1, None).endswith("/workbench")
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with TestClient(seen["app"]) as c:
        assert c.get("/workbench", params={"query": bench["query"]}).status_code == 200
