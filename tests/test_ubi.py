"""UBI logs in (`ltr.data.ubi`, `ltr ingest-ubi`): the shared OpenSearch sample, and a round trip from the
built-in world's impressions to UBI (bulk NDJSON, plain NDJSON, parquet) and back to the same table."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ltr.cli import app
from ltr.data.dataset import Dataset, read_table
from ltr.data.esci import esci_sample_dir, load_esci
from ltr.data.schemas import IMPRESSIONS, QUERIES
from ltr.data.ubi import UbiConfig, UbiError, ingest_ubi, parse_timestamp, read_ubi, ubi_impressions
from ltr.sim.world import WorldConfig, generate_world

runner = CliRunner()
UBI_SAMPLE = esci_sample_dir().parent / "ubi"
IMP_COLS = ["request_id", "ts", "query_id", "product_id", "position", "clicked", "added_to_cart", "purchased"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ubi-world") / "world"
    cfg = WorldConfig(n_products=150, n_queries=12, n_candidates=8, sessions=60, days=3, depth=5)
    generate_world(root, seed=5, cfg=cfg, progress=False)
    return root


def _bare_copy(world: Path, dst: Path) -> Path:
    """The world's dataset without its impressions (what a shop has before its logs come in)."""
    shutil.copytree(world, dst, ignore=shutil.ignore_patterns("impressions.parquet"))
    return dst


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ubi_docs(world: Path) -> tuple[list[dict], list[dict]]:
    """UBI documents of the world's impressions: one ubi_queries doc per request, an impression event per
    row (ordinal = position - 1) and click / add_to_cart / purchase events where the row has them."""
    imps = read_table(world / "impressions.parquet", IMPRESSIONS)
    text = read_table(world / "queries.parquet", QUERIES).set_index("query_id")["query"]
    queries, events = [], []
    for rid, g in imps.groupby("request_id", sort=True):
        queries.append({"query_id": rid, "user_query": text[g["query_id"].iloc[0]], "timestamp": _iso(g["ts"].min()),
                        "client_id": "c1", "query_attributes": {}})
        for r in g.itertuples():
            base = {"query_id": rid, "timestamp": _iso(r.ts), "session_id": "s1",
                    "event_attributes": {"object": {"object_id": r.product_id, "object_id_field": "product_id"},
                                         "position": {"ordinal": int(r.position) - 1}}}
            events.append({"action_name": "impression", **base})
            for flag, action in (("clicked", "click"), ("added_to_cart", "add_to_cart"), ("purchased", "purchase")):
                if getattr(r, flag):
                    events.append({"action_name": action, **base})
    return queries, events


def _decoys(world: Path) -> list[dict]:
    """Rows a real log has and an ingester must count, not drop silently."""
    imps = read_table(world / "impressions.parquet", IMPRESSIONS)
    r = imps.iloc[0]
    ev = {"event_attributes": {"object": {"object_id": r.product_id}, "position": {"ordinal": 0}}}
    return [
        {"action_name": "click", "query_id": "no-such-request", "timestamp": _iso(r.ts), **ev},   # no impression
        {"action_name": "click", "query_id": r.request_id, "timestamp": _iso(r.ts),
         "event_attributes": {"object": {"object_id": "NOT-IN-CATALOG"}}},                       # unknown product
        {"action_name": "impression", "query_id": "bad-clock", "timestamp": "yesterday-ish", **ev},  # bad timestamp
        {"action_name": "search", "query_id": r.request_id, "timestamp": _iso(r.ts)},             # unmapped action
    ]


def _bulk(path: Path, queries: list[dict], events: list[dict]) -> Path:
    lines = []
    for index, docs in (("ubi_queries", queries), ("ubi_events", events)):
        for i, d in enumerate(docs):
            lines += [json.dumps({"index": {"_index": index, "_id": f"{index}-{i}"}}), json.dumps(d)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_world_round_trip_bulk_ndjson(world, tmp_path):
    queries, events = _ubi_docs(world)
    src = _bulk(tmp_path / "ubi.ndjson", queries, events + _decoys(world))
    ds = _bare_copy(world, tmp_path / "ds")
    rep = ingest_ubi([src], ds)
    want = read_table(world / "impressions.parquet", IMPRESSIONS)
    got = read_table(ds / "impressions.parquet", IMPRESSIONS)
    key = ["request_id", "product_id"]
    pd.testing.assert_frame_equal(got[IMP_COLS].sort_values(key).reset_index(drop=True),
                                  want[IMP_COLS].sort_values(key).reset_index(drop=True))
    j = rep["joined"]
    assert j["impressions"] == len(want) and j["requests"] == want["request_id"].nunique()
    assert (j["clicks"], j["add_to_cart"], j["purchases"]) == (
        int(want["clicked"].sum()), int(want["added_to_cart"].sum()), int(want["purchased"].sum()))
    assert j["clicks"] > 0
    assert rep["unused_events"] == {"bad timestamp": 1, "event without impression": 1, "unknown product": 1}
    assert rep["unmapped_actions"] == {"search": 1}
    used = j["from_impression_events"] + j["clicks"] + j["add_to_cart"] + j["purchases"]
    assert used + sum(rep["unused_events"].values()) + sum(rep["unmapped_actions"].values()) == len(events) + 4
    meta = Dataset.load(ds).metadata
    assert meta["engagement_source"] == "ubi" and meta["simulated_engagement"] is False
    assert meta["ubi"]["joined"] == j


def test_plain_ndjson_and_parquet_give_the_same_impressions(world, tmp_path):
    queries, events = _ubi_docs(world)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(d) + "\n" for d in queries + events))
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pd.DataFrame(queries).drop(columns=["query_attributes"]).to_parquet(pq_dir / "ubi_queries.parquet")
    flat = pd.json_normalize(events)                        # dotted columns, as many exports flatten them
    flat.to_parquet(pq_dir / "ubi_events.parquet")
    a = ingest_ubi([plain], _bare_copy(world, tmp_path / "a"))
    b = ingest_ubi([pq_dir], _bare_copy(world, tmp_path / "b"))
    assert a["joined"] == b["joined"] and a["joined"]["impressions"] == len(events) - a["joined"]["clicks"] - \
        a["joined"]["add_to_cart"] - a["joined"]["purchases"]
    fa = read_table(tmp_path / "a" / "impressions.parquet", IMPRESSIONS)
    fb = read_table(tmp_path / "b" / "impressions.parquet", IMPRESSIONS)
    pd.testing.assert_frame_equal(fa, fb)


def test_hit_ids_stand_in_for_missing_impression_events(world, tmp_path):
    prods = list(read_table(world / "products.parquet", "products")["product_id"][:3])
    log = read_ubi([_bulk(tmp_path / "h.ndjson", [
        {"query_id": "R1", "user_query": "Red Shoes", "timestamp": 1717527762129,        # epoch milliseconds
         "query_response_hit_ids": prods + ["GONE"]}], [
        {"action_name": "click", "query_id": "R1", "timestamp": "2024-06-04T19:02:43Z",
         "event_attributes": {"object": {"object_id": prods[1]}}}])])
    df, rep = ubi_impressions(log, prods)
    assert list(df["product_id"]) == prods and list(df["position"]) == [1, 2, 3]
    assert list(df["clicked"]) == [False, True, False]
    assert df["ts"].iloc[0] == pd.Timestamp("2024-06-04 19:02:42.129", tz="UTC")
    assert rep["joined"]["from_query_response_hit_ids"] == 3 and rep["unused_hit_ids"] == {"unknown product": 1}


def test_action_mapping_is_configurable(world, tmp_path):
    queries, events = _ubi_docs(world)
    for e in events:
        e["action_name"] = {"click": "tap", "impression": "view"}.get(e["action_name"], e["action_name"])
    log = read_ubi([_bulk(tmp_path / "m.ndjson", queries, events)])
    prods = read_table(world / "products.parquet", "products")["product_id"]
    default, rep0 = ubi_impressions(log, prods)
    assert default.empty and rep0["unmapped_actions"]["view"] > 0
    cfg = UbiConfig(impression_actions=["view"], actions={"tap": "click", "add_to_cart": "add_to_cart"})
    df, rep = ubi_impressions(log, prods, cfg)
    want = read_table(world / "impressions.parquet", IMPRESSIONS)
    assert len(df) == len(want) and int(df["clicked"].sum()) == int(want["clicked"].sum())
    n_bought = int(want["purchased"].sum())
    assert int(df["purchased"].sum()) == 0 and rep["unmapped_actions"].get("purchase", 0) == n_bought
    with pytest.raises(ValueError, match="both impressions and outcomes"):
        UbiConfig(impression_actions=["view"], actions={"view": "click"})


@pytest.mark.parametrize("content, needle", [
    (b'{"index": {"_index": "ubi_events"}}\n{"action_name": "click"\n', "line 2: not JSON"),
    (b'{"index": {"_index": "ubi_events"}}\n', "without its document"),
    (b'{"user_query": "caf\xe9"}\n', "not UTF-8"),
    (b'{"hello": "world"}\n', "no ubi_queries or ubi_events"),
])
def test_bad_files_raise_and_write_nothing(world, tmp_path, content, needle):
    ds = _bare_copy(world, tmp_path / "ds")
    before = _digest(ds)
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(content)
    with pytest.raises(UbiError, match=needle):
        ingest_ubi([bad], ds)
    assert _digest(ds) == before


def test_nothing_joined_or_existing_logs_refuse(world, tmp_path):
    queries, events = _ubi_docs(world)
    for e in events:
        e["event_attributes"]["object"]["object_id"] = "X-" + e["event_attributes"]["object"]["object_id"]
    src = _bulk(tmp_path / "x.ndjson", queries, events)
    ds = _bare_copy(world, tmp_path / "ds")
    before = _digest(ds)
    with pytest.raises(UbiError, match="no impression could be joined.*unknown product"):
        ingest_ubi([src], ds)
    assert _digest(ds) == before
    with pytest.raises(UbiError, match="already exists.*--overwrite"):
        ingest_ubi([src], world)


def test_append_extends_the_log_and_refuses_a_second_ingest(world, tmp_path):
    """A shop's new day of logs is appended (the engagement windows need the old days); the same day twice
    is refused before anything is written."""
    queries, events = _ubi_docs(world)
    first = {q["query_id"] for q in queries[: len(queries) // 2]}
    day = {k: _bulk(tmp_path / f"{k}.ndjson", [q for q in queries if (q["query_id"] in first) == (k == "a")],
                    [e for e in events if (e["query_id"] in first) == (k == "a")]) for k in ("a", "b")}
    ds = _bare_copy(world, tmp_path / "ds")
    ingest_ubi([day["a"]], ds)
    n_a = len(read_table(ds / "impressions.parquet", IMPRESSIONS))
    rep = ingest_ubi([day["b"]], ds, append=True)
    assert rep["joined"]["appended_to"] == n_a
    key = ["request_id", "product_id"]
    got = read_table(ds / "impressions.parquet", IMPRESSIONS)[IMP_COLS].sort_values(key).reset_index(drop=True)
    want = read_table(world / "impressions.parquet", IMPRESSIONS)[IMP_COLS].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    before = _digest(ds)
    with pytest.raises(UbiError, match="already in .*ingested before"):
        ingest_ubi([day["b"]], ds, append=True)
    with pytest.raises(UbiError, match="contradict"):
        ingest_ubi([day["b"]], ds, append=True, overwrite=True)
    assert _digest(ds) == before


def test_timestamps():
    assert parse_timestamp("2024-12-10T00:26:04.625Z") == pd.Timestamp("2024-12-10 00:26:04.625", tz="UTC")
    assert parse_timestamp("2025-01-24T07:31:30.699+0000") == pd.Timestamp("2025-01-24 07:31:30.699", tz="UTC")
    assert parse_timestamp(1717527762) == pd.Timestamp("2024-06-04 19:02:42", tz="UTC")
    assert parse_timestamp("1717527762129") == pd.Timestamp("2024-06-04 19:02:42.129", tz="UTC")
    assert [parse_timestamp(v) for v in ("yesterday", "", None, float("nan"), True, [1])] == [None] * 6


def test_cli_ingest_and_its_errors(world, tmp_path):
    queries, events = _ubi_docs(world)
    src = _bulk(tmp_path / "ubi.ndjson", queries, events)
    ds = _bare_copy(world, tmp_path / "ds")
    res = runner.invoke(app, ["ingest-ubi", "--dataset", str(ds), "--src", str(src), "--simulated"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["joined"]["impressions"] == len(read_table(ds / "impressions.parquet", IMPRESSIONS))
    assert Dataset.load(ds).engagement_simulated
    for args, needle in ((["--src", str(src)], "already exists"),
                         (["--src", str(tmp_path / "nope.ndjson"), "--overwrite"], "no such file"),
                         (["--src", str(src), "--overwrite", "--action", "click"], "NAME=OUTCOME"),
                         (["--src", str(src), "--overwrite", "--action", "click=like"], "actions.click")):
        before = _digest(ds)
        r = runner.invoke(app, ["ingest-ubi", "--dataset", str(ds), *args])
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
        assert _digest(ds) == before


def test_the_shared_ubi_sample(tmp_path):
    if not (UBI_SAMPLE / "ubi_queries_events.ndjson").exists() or not (esci_sample_dir() / "products.parquet").exists():
        pytest.skip(f"shared UBI sample or ESCI catalog not found at {UBI_SAMPLE} / {esci_sample_dir()}")
    ds = tmp_path / "esci"
    load_esci(esci_sample_dir(), ds)
    rep = ingest_ubi([UBI_SAMPLE], ds, simulated=True)
    # an independent count over the raw file: impression events of catalog products, one per (request, product)
    catalog = set(read_table(ds / "products.parquet", "products")["product_id"])
    lines = (UBI_SAMPLE / "ubi_queries_events.ndjson").read_text().splitlines()
    docs = [(json.loads(a)["index"]["_index"], json.loads(b)) for a, b in zip(lines[::2], lines[1::2])]
    events = [d for i, d in docs if i == "ubi_events"]
    shown = {(e["query_id"], e["event_attributes"]["object"]["object_id"]) for e in events
             if e["action_name"] == "impression" and e["event_attributes"]["object"]["object_id"] in catalog}
    assert rep["input"] == {"ubi_queries": len(docs) - len(events), "ubi_events": len(events),
                            "files": {str(UBI_SAMPLE / "ubi_queries_events.ndjson"):
                                      {"ubi_queries": len(docs) - len(events), "ubi_events": len(events)}},
                            "other_documents": {}}
    j = rep["joined"]
    assert j["from_impression_events"] == len(shown) > 0
    assert rep["unused_events"]["unknown product"] > j["impressions"]      # most of the sample is another catalog
    used = j["from_impression_events"] + j["clicks"] + j["add_to_cart"] + j["purchases"]
    assert used + sum(rep["unused_events"].values()) + sum(rep["unmapped_actions"].values()) == len(events)
    got = Dataset.load(ds)
    assert len(got.impressions) == j["impressions"] and got.engagement_simulated
    assert set(got.impressions["query_id"]) <= set(got.queries["query_id"])  # logged queries added with their text
