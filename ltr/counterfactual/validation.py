"""Checks of the offline estimates against the built-in world, whose shoppers and click model are known.

Why here and not in the tests only: the benchmark (`bench/bench_counterfactual.py`) and the tests run the
same checks, and a shop that builds its own simulator can run them too. Two ground truths:

- `replay`: the world's shoppers (`ltr.sim.replay.replay_shoppers`, the same click model that wrote the
  world's log) search again, answered by a ranker behind an in-process HTTP transport, and their UBI
  events are counted per search: what an A/B test of that ranker would measure.
- `expected`: the same quantity without the shoppers' coin flips, sum_r theta_r * attract_d (times
  P(cart | click) for add-to-carts) from the world's true click model, averaged over the ranker's own
  randomness for a ranker that churns.

Rankers are callables `(query_id, product_ids, rng) -> product_ids in ranked order`: `ScoredRanker` for a
model's scores, `WorldLoggingRanker` for the production ranker the world's log was collected under.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ltr.data.dataset import Dataset
from ltr.data.schemas import query_id as make_query_id
from ltr.sim.click_model import ClickModel
from ltr.sim.replay import replay_shoppers, shopper_pairs
from ltr.sim.sessions import EPOCH, baseline_scores, lexical_overlap

from .logs import CounterfactualError

Ranker = Callable[[str, Sequence[str], np.random.Generator], list[str]]


class ScoredRanker:
    """Ranks a query's candidates by a fixed score per (query_id, product_id), highest first (ties by id)."""

    def __init__(self, scores: pd.DataFrame):
        for col in ("query_id", "product_id", "score"):
            if col not in scores.columns:
                raise CounterfactualError(f"scores are missing column '{col}'. Fix: query_id, product_id, score.")
        self.scores = {q: g.set_index("product_id")["score"] for q, g in scores.groupby("query_id", sort=False)}

    def __call__(self, query_id: str, product_ids: Sequence[str], rng: np.random.Generator) -> list[str]:
        s = self.scores[query_id].reindex(list(product_ids)).fillna(-np.inf)
        return list(s.sort_index(kind="stable").sort_values(ascending=False, kind="stable").index)


class WorldLoggingRanker:
    """The built-in world's production ranker: lexical match, popularity and discount plus per-search churn
    (`ltr.sim.sessions.baseline_scores`, noise `WorldConfig.ranker_noise`), rebuilt from the dataset."""

    def __init__(self, ds: Dataset):
        cfg = ds.metadata.get("config", {})
        self.noise = float(cfg.get("ranker_noise", 0.6))
        prods = ds.products.set_index("product_id")
        cand = ds.candidates[["query_id", "product_id"]].copy()
        text = (prods["title"] + " " + prods["brand"].fillna("")).reindex(cand["product_id"]).tolist()
        qtext = ds.queries.set_index("query_id")["query"].reindex(cand["query_id"]).tolist()
        cand["lexical"] = lexical_overlap(qtext, text)
        for col in ("popularity", "discount"):
            cand[col] = prods[col].reindex(cand["product_id"]).to_numpy()
        cand["score"] = baseline_scores(cand)
        self.scores = {q: g.set_index("product_id")["score"] for q, g in cand.groupby("query_id", sort=False)}

    def __call__(self, query_id: str, product_ids: Sequence[str], rng: np.random.Generator) -> list[str]:
        s = self.scores[query_id].reindex(list(product_ids)).fillna(-np.inf).to_numpy()
        noisy = s + rng.normal(0.0, self.noise, len(s))
        return [product_ids[i] for i in np.argsort(-noisy, kind="stable")]


def fit_content_ranker(ds: Dataset, features: pd.DataFrame, n_estimators: int = 100) -> ScoredRanker:
    """A real model to evaluate: XGBoost LambdaMART on the dataset's human judgments with lexical and product
    features (a content ranker, as the platform's champion is), scoring every pair of `features`."""
    from features.names import LEXICAL, PRODUCT
    from ltr.rankers import XGBLambdaMART

    cols = [c for c in (*LEXICAL, *PRODUCT) if c in features.columns]
    judged = ds.judgments[["query_id", "product_id", "grade"]].merge(features, on=["query_id", "product_id"])
    if judged["query_id"].nunique() < 5:
        raise CounterfactualError("fewer than 5 judged queries among the candidates. Fix: a dataset with "
                                  "judgments.parquet over its candidates (the built-in world has them).")
    model = XGBLambdaMART(n_estimators=n_estimators, max_depth=4, early_stopping_rounds=None, n_jobs=1)
    model.fit(judged[cols], judged["grade"].to_numpy(float), judged["query_id"].to_numpy())
    scores = features[["query_id", "product_id"]].assign(score=model.predict(features[cols]))
    return ScoredRanker(scores)


def ranker_transport(ranker: Ranker, seed: int):
    """An httpx transport answering POST /v1/rank with `ranker`'s order, as the ranking service would."""
    import httpx

    rng = np.random.default_rng(seed)
    count = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        order = ranker(make_query_id(body["query"]), body["product_ids"], rng)
        count[0] += 1
        return httpx.Response(200, json={"request_id": f"x{seed}-{count[0]:07d}", "model_version": "replay",
                                         "results": [{"product_id": p} for p in order]})

    return httpx.MockTransport(handle)


def replay(dataset_dir, ranker: Ranker, sessions: int, seed: int = 0, k: int = 10) -> pd.DataFrame:
    """The world's shoppers against `ranker`: per query, searches and clicks / add-to-carts in the top k."""
    import httpx

    with httpx.Client(transport=ranker_transport(ranker, seed), base_url="http://ranker") as client:
        log = replay_shoppers("http://ranker", dataset_dir, sessions, EPOCH, seed=seed, client=client, depth=k)
    if log.failures:
        raise CounterfactualError(f"replay: {len(log.failures)} request(s) failed, e.g. {log.failures[0]}.")
    searches = pd.DataFrame(log.responses)[["request_id", "query_id"]]
    ev = pd.DataFrame([{"request_id": e["query_id"], "action": e["action_name"]} for e in log.events
                       if e["action_name"] in ("click", "add_to_cart")])
    counts = (ev.groupby(["request_id", "action"]).size().unstack(fill_value=0) if len(ev) else
              pd.DataFrame(columns=["click", "add_to_cart"]))
    per = searches.merge(counts, left_on="request_id", right_index=True, how="left").fillna(0)
    g = per.groupby("query_id")
    return pd.DataFrame({"searches": g.size(), "clicked": g["click"].sum() if "click" in per else 0.0,
                         "added_to_cart": g["add_to_cart"].sum() if "add_to_cart" in per else 0.0})


def expected(dataset_dir, ranker: Ranker, k: int = 10, draws: int = 1, seed: int = 0) -> pd.DataFrame:
    """Per query, the true expected clicks and add-to-carts per search in `ranker`'s top k (averaged over
    `draws` rankings, for a ranker that churns), from the world's click model."""
    ds = Dataset.load(dataset_dir)
    cm = ClickModel(**ds.metadata.get("config", {}).get("click_model", {}))
    pairs = shopper_pairs(ds, cm)
    theta = 1.0 / np.arange(1, k + 1) ** cm.eta
    rng = np.random.default_rng(seed)
    rows = {}
    for q, g in pairs.groupby("query_id", sort=False):
        ids = list(g["product_id"])
        at = dict(zip(ids, range(len(ids))))
        click, cart = g["attract"].to_numpy(), (g["attract"] * g["p_cart"]).to_numpy()
        total = np.zeros(2)
        for _ in range(draws):
            top = [at[p] for p in ranker(q, ids, rng)[:k]]
            total += [(theta[: len(top)] * click[top]).sum(), (theta[: len(top)] * cart[top]).sum()]
        rows[q] = {"clicked": total[0] / draws, "added_to_cart": total[1] / draws}
    return pd.DataFrame.from_dict(rows, orient="index")


def traffic_weighted_difference(new: pd.DataFrame, old: pd.DataFrame, searches: pd.Series) -> dict[str, float]:
    """sum_q share_q * (new_q - old_q) per outcome, rates per search, with the log's traffic share per query.
    Why the log's traffic: the offline estimate averages over the logged searches, so the replay's own
    volume-proportional plan (which rounds tail queries differently) must not move the comparison."""
    share = searches / searches.sum()
    out = {}
    for o in ("clicked", "added_to_cart"):
        rate_new = new[o] / new["searches"] if "searches" in new else new[o]
        rate_old = old[o] / old["searches"] if "searches" in old else old[o]
        d = (rate_new - rate_old).reindex(share.index)
        if d.isna().any():
            raise CounterfactualError(f"no replayed search for {int(d.isna().sum())} logged query(ies). Fix: "
                                      "replay more sessions (each query gets one at least).")
        out[o] = float((share * d).sum())
    return out


__all__ = ["ScoredRanker", "WorldLoggingRanker", "expected", "fit_content_ranker", "ranker_transport", "replay",
           "traffic_weighted_difference"]
