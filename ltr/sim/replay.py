"""Simulated shoppers against a running ranking service, logged as OpenSearch UBI documents.

Why: the loop a shop runs (serve the champion, log what shoppers did, ingest the logs, retrain, promote)
can only be tested end to end if someone searches. Here the built-in world's shoppers do: each session
sends one of the world's queries with its candidate list to the service over HTTP (`POST /v1/rank`), sees
the top `depth` results in the order the service returned, and clicks, adds to cart and buys as the world's
click model says, given the positions shown and the world's true relevance (`truth.parquet`), the same
model that made the world's own logs. So the new logs carry the served ranking's position bias and the
world's relevance, and nothing the service did not show can be clicked.

The output is what a shop's search front end would write: one `ubi_queries` document per search whose
`query_id` is the service's `request_id` (so the service's served-feature log joins it), and `ubi_events`
documents (`impression` for every shown result with `event_attributes.position.ordinal`, its 0-based rank,
then `click` / `add_to_cart` / `purchase`). `ltr.data.ubi.ingest_ubi` reads them back.

Time is the world's clock, not the wall clock: sessions fall in `[start, start + hours)` (pass the end of
the dataset's log to continue it), so the new logs extend the old ones the way a shop's next day would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.dataset import Dataset

from .click_model import ClickModel

OUTCOMES = (("clicked", "click", 5), ("added_to_cart", "add_to_cart", 60), ("purchased", "purchase", 180))


@dataclass
class ReplayLog:
    """The UBI documents of a replay, the responses it got, and the requests that failed (status, body)."""

    queries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        """One OpenSearch bulk NDJSON file (`ubi_queries` then `ubi_events`), as `_bulk` exports it."""
        lines = []
        for index, docs in (("ubi_queries", self.queries), ("ubi_events", self.events)):
            for i, doc in enumerate(docs):
                lines += [json.dumps({"index": {"_index": index, "_id": f"{index}-{i}"}}), json.dumps(doc)]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
        return path


def shopper_pairs(ds: Dataset, click_model: ClickModel) -> pd.DataFrame:
    """Every candidate pair with what the shopper reacts to: the true grade, popularity, price and discount
    (z-scored within the query's candidates by the click model, as the world's own sessions do)."""
    truth = ds.load_truth()
    if truth is None:
        raise ValueError(f"{ds.root}: no truth.parquet. Fix: replay the built-in world (`ltr world`), whose true "
                         "grades decide what its shoppers find relevant.")
    pairs = ds.candidates[["query_id", "product_id"]].merge(truth[["query_id", "product_id", "grade"]],
                                                            on=["query_id", "product_id"], how="inner")
    prods = ds.products.set_index("product_id")
    pop = prods["popularity"] if "popularity" in prods.columns else prods["rating_count"]
    pairs["popularity"] = pop.reindex(pairs["product_id"]).fillna(0.0).to_numpy()
    pairs["price"] = prods["price"].reindex(pairs["product_id"]).to_numpy()
    if "discount" in prods.columns:
        pairs["discount"] = prods["discount"].reindex(pairs["product_id"]).fillna(0.0).to_numpy()
    return pd.concat([pairs, click_model.probabilities(pairs)], axis=1)


def session_plan(queries: pd.DataFrame, sessions: int, start: pd.Timestamp, hours: float,
                 rng: np.random.Generator) -> pd.DataFrame:
    """(ts, query_id) of each session in time order: queries in proportion to their `volume` (equal without
    one), each at least once, at uniform times in the window; `sessions` in all (largest remainder) unless
    there are more queries than that."""
    vol = queries["volume"].astype(float) if "volume" in queries.columns else pd.Series(1.0, index=queries.index)
    raw = (vol / vol.sum() * sessions).to_numpy()
    counts = np.maximum(1, np.floor(raw)).astype(int)
    short = sessions - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(raw - np.floor(raw)), kind="stable")[:short]] += 1
    qids = np.repeat(queries["query_id"].to_numpy(), counts)
    secs = np.sort(rng.uniform(0, hours * 3600, len(qids)))
    return pd.DataFrame({"ts": start + pd.to_timedelta(secs, unit="s"), "query_id": rng.permutation(qids)})


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ubi_docs(log: ReplayLog, rid: str, text: str, ts: pd.Timestamp, shown: pd.DataFrame, session: str,
              body: dict[str, Any]) -> None:
    """The search's ubi_queries document and its impression and outcome events. An interleaved response's
    arms go where a front end would put them: `event_attributes.interleaving.arm` of each impression."""
    common = {"application": "ltr-replay", "query_id": rid, "client_id": session, "user_query": text}
    qattrs = {"model_version": body["model_version"]}
    if body.get("interleaved"):
        qattrs.update(interleaved=True, challenger_version=body.get("challenger_version"))
    log.queries.append({**common, "timestamp": _iso(ts), "query_response_hit_ids": list(shown["product_id"]),
                        "query_attributes": qattrs})
    arms = {x["product_id"]: x.get("arm") for x in body["results"]}
    for r in shown.itertuples():
        attrs = {"object": {"object_id": r.product_id, "object_id_field": "product_id"},
                 "position": {"ordinal": int(r.position) - 1}}
        if arms.get(r.product_id) is not None:
            attrs["interleaving"] = {"arm": arms[r.product_id]}
        base = {**common, "session_id": session, "event_attributes": attrs}
        log.events.append({"action_name": "impression", "timestamp": _iso(ts), **base})
        for col, action, delay_s in OUTCOMES:
            if getattr(r, col):
                log.events.append({"action_name": action, "timestamp": _iso(ts + pd.Timedelta(seconds=delay_s)),
                                   **base})


def replay_shoppers(url: str, dataset_dir: str | Path, sessions: int, start: pd.Timestamp, *, hours: float = 24.0,
                    depth: int = 10, seed: int = 0, click_model: ClickModel | None = None,
                    client: Any = None, timeout_s: float = 60.0, request_ids: str | None = None) -> ReplayLog:
    """Send `sessions` searches of the dataset's queries to the service at `url`, one after another, and
    return the UBI log of what the simulated shoppers saw and did.

    dataset_dir: a built-in world (candidates, truth, products with popularity / price / discount).
    click_model: default the world's own (its config's `click_model` overrides). client: an httpx.Client
    to reuse (default: one opened here). A request that does not return 200 is recorded in `failures`
    (its shopper saw nothing) and the replay goes on. Same seed and same rankings -> the same sessions, positions
    and outcomes. request_ids: None -> the service makes the ids; a prefix -> the searches send PREFIX000000,
    PREFIX000001, ... (a front end's own ids; what an interleaved draft is seeded by, so a replay repeats it).
    """
    import httpx

    ds = Dataset.load(dataset_dir)
    cm = click_model or ClickModel(**ds.metadata.get("config", {}).get("click_model", {}))
    pairs = shopper_pairs(ds, cm)
    by_query = {q: g.set_index("product_id") for q, g in pairs.groupby("query_id", sort=False)}
    queries = ds.queries[ds.queries["query_id"].isin(by_query)]
    text = queries.set_index("query_id")["query"]
    rng = np.random.default_rng(seed)
    plan = session_plan(queries, sessions, pd.Timestamp(start), hours, rng)
    log = ReplayLog()
    own = client is None
    client = httpx.Client(base_url=url, timeout=timeout_s) if own else client
    try:
        for n, s in enumerate(plan.itertuples()):
            cand = by_query[s.query_id]
            req = {"query": text[s.query_id], "product_ids": list(cand.index)}
            if request_ids is not None:
                req["request_id"] = f"{request_ids}{n:06d}"
            r = client.post(f"{url.rstrip('/')}/v1/rank", json=req)
            if r.status_code != 200:
                log.failures.append(f"{r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            ids = [x["product_id"] for x in body["results"][:depth]]
            shown = cand.loc[ids, ["attract", "p_cart", "p_purchase"]].reset_index()
            shown["position"] = np.arange(1, len(ids) + 1)
            shown = cm.simulate(shown, rng)
            log.responses.append({"request_id": body["request_id"], "query_id": s.query_id,
                                  "model_version": body["model_version"], "shown": ids})
            _ubi_docs(log, body["request_id"], text[s.query_id], s.ts, shown, f"s{seed}-{n:06d}", body)
    finally:
        if own:
            client.close()
    return log


__all__ = ["ReplayLog", "replay_shoppers", "session_plan", "shopper_pairs"]
