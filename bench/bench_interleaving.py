"""Benchmark: how many searches team-draft interleaving needs to see a true difference, against an A/B test
of clicks per search, on the built-in world with its own shoppers (ltr/interleaving.py's claim of one to two
orders of magnitude, measured instead of quoted).

Why the built-in world: its click model is known, so every pair of rankers has a true gap
(`ltr.counterfactual.validation.expected`, exact expected clicks per search) and a test's verdict can be
scored as right or wrong. Three pairs, trained with XGBoost LambdaMART on the world's true grades: a large
gap (content-blind product features against lexical + product), a modest one (5 against 30 trees) and none
(the 30-tree ranker against itself: what the identical pair rejects is the false-positive rate).

Per pair and seed the world's shoppers (`ltr.sim.replay.replay_shoppers`) search an in-process ranker that
answers as the service does with a challenger (`ltr/serving/app.py`): both rankers' orders team-drafted,
seeded by the request id, `arm` per result. Their UBI log is read back with `ubi_credits` and judged by
`interleaving_report`. The A/B test of the same total N gives each ranker N/2 searches of its own shoppers
(independent seeds) and a Welch t-test on clicks per search. Power: the share of seeds whose 95% interval
excludes 0 on the challenger's side. The N searches of a seed are the first N of one replay of the largest
N, so a seed's rows are the same experiment read at growing sizes, as a running test would be read.

    .venv/bin/python -m bench.bench_interleaving --out bench/results           # ~6 min on 2 cores
    .venv/bin/python -m bench.bench_interleaving --out /tmp/il --quick         # ~1 min
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.counterfactual.validation import ScoredRanker, expected, ranker_transport
from ltr.data.provenance import stamp
from ltr.data.schemas import query_id as make_query_id
from ltr.interleaving import ARMS, interleaving_report, outcomes, request_seed, team_draft, ubi_credits
from ltr.sim.replay import replay_shoppers
from ltr.sim.sessions import EPOCH
from ltr.sim.world import WorldConfig, generate_world

WORLD = dict(n_products=800, n_queries=60, n_candidates=30, days=7, sessions=1500)  # tests/test_interleaving.py's
WORLD_SEED = 5
K = 10  # the shown depth, as the replay's and expected()'s default
#: ranker -> (feature families, trees)
RANKERS = {"product only, 30 trees": (("product",), 30), "lexical+product, 5 trees": (("lexical", "product"), 5),
           "lexical+product, 30 trees": (("lexical", "product"), 30)}
#: pair -> (champion, challenger): the challenger is the better one, so power is read on its side
PAIRS = {"large gap": ("product only, 30 trees", "lexical+product, 30 trees"),
         "modest gap": ("lexical+product, 5 trees", "lexical+product, 30 trees"),
         "identical": ("lexical+product, 30 trees", "lexical+product, 30 trees")}
Z80 = 1.959964 + 0.841621  # two-sided 5% test, 80% power (normal approximation)
DEFAULT_N, QUICK_N = [100, 200, 500, 1000, 2000], [100, 400]


def fit_rankers(world: Path) -> dict[str, ScoredRanker]:
    """The rankers of RANKERS, trained as tests/test_interleaving.py's registered versions are (true grades,
    depth 3), so the large gap here is the one that test measured through the real service."""
    from features.lexical import LEXICAL_FEATURES
    from features.ondemand import OnDemandFeatures
    from features.product import PRODUCT_FEATURES
    from ltr.data.dataset import Dataset
    from ltr.rankers import XGBLambdaMART

    ds = Dataset.load(world)
    truth = ds.load_truth().merge(ds.queries[["query_id", "query"]], on="query_id")
    family = {"lexical": list(LEXICAL_FEATURES), "product": list(PRODUCT_FEATURES)}
    cols = family["lexical"] + family["product"]
    X = OnDemandFeatures(ds.products).compute(truth[["query", "product_id"]], cols)[cols]
    out = {}
    for name, (families, trees) in RANKERS.items():
        use = [c for f in families for c in family[f]]
        model = XGBLambdaMART(n_estimators=trees, max_depth=3, early_stopping_rounds=None, random_state=0, n_jobs=2)
        model.fit(X[use], truth["grade"].to_numpy(float), truth["query_id"].to_numpy())
        out[name] = ScoredRanker(truth[["query_id", "product_id"]].assign(score=model.predict(X[use])))
    return out


def true_clicks(world: Path, ranker: ScoredRanker) -> dict[str, float]:
    """Expected clicks per search under the world's truth, per query weighted by its search volume (what the
    replay's searches average to: its plan draws queries by volume) and with queries weighted equally."""
    from ltr.data.dataset import Dataset

    e = expected(world, ranker, k=K)["clicked"]
    vol = Dataset.load(world).queries.set_index("query_id")["volume"].reindex(e.index)
    return {"by_volume": float((e * vol).sum() / vol.sum()), "queries_equal": float(e.mean())}


def true_gap(champion: dict, challenger: dict) -> dict[str, float]:
    v = challenger["by_volume"] - champion["by_volume"]
    return {"clicks_per_search": round(v, 5), "relative": round(v / champion["by_volume"], 5),
            "relative_queries_equal": round(challenger["queries_equal"] / champion["queries_equal"] - 1, 5)}


# --- the two experiments -------------------------------------------------------------------------------

def draft_transport(champion: ScoredRanker, challenger: ScoredRanker):
    """An httpx transport answering POST /v1/rank as the service does with a challenger and an interleave share
    of 1: the two orders team-drafted with the request's own seed, each result naming the arm that placed it."""
    import httpx

    rng = np.random.default_rng(0)  # ScoredRanker ignores it; the Ranker protocol passes one

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        ids, qid = body["product_ids"], make_query_id(body["query"])
        at = {p: i for i, p in enumerate(ids)}
        a, b = ([at[p] for p in r(qid, ids, rng)] for r in (champion, challenger))
        order, team = team_draft(a, b, request_seed(body["request_id"]))
        return httpx.Response(200, json={
            "request_id": body["request_id"], "model_version": "champion", "interleaved": True,
            "challenger_version": "challenger",
            "results": [{"product_id": ids[i], "arm": ARMS[t]} for i, t in zip(order.tolist(), team.tolist())]})

    return httpx.MockTransport(handle)


def _shoppers(world: Path, transport, sessions: int, seed: int, request_ids: str | None = None):
    import httpx

    with httpx.Client(transport=transport, base_url="http://ranker") as client:
        log = replay_shoppers("http://ranker", world, sessions, EPOCH, seed=seed, client=client, depth=K,
                              request_ids=request_ids)
    if log.failures:
        raise RuntimeError(f"replay: {len(log.failures)} request(s) failed, e.g. {log.failures[0]}")
    return log


def interleaved(world: Path, champion, challenger, sessions: int, seed: int, tmp: Path) -> tuple[pd.DataFrame, list]:
    """(credits, request ids in search order) of one interleaved replay, read back from its UBI file as a
    shop's logs would be (`ubi_credits`), so the bench measures the path `ltr interleaving` reads."""
    prefix = f"il{seed}-"
    log = _shoppers(world, draft_transport(champion, challenger), sessions, seed, prefix)
    credits = ubi_credits([log.write(tmp / f"{prefix}ubi.ndjson")])
    return credits, [r["request_id"] for r in log.responses]


def clicks_per_search(world: Path, ranker, sessions: int, seed: int) -> np.ndarray:
    """One A/B arm: clicks in the top K of each search, in search order, with the ranker served alone by the
    transport `validation.replay` uses; not `replay` itself, which sums clicks per query where a t-test needs
    them per search."""
    log = _shoppers(world, ranker_transport(ranker, seed), sessions, seed)
    clicks = pd.Series([e["query_id"] for e in log.events if e["action_name"] == "click"]).value_counts()
    return clicks.reindex([r["request_id"] for r in log.responses], fill_value=0).to_numpy(float)


def interleaving_cell(credits: pd.DataFrame, ids: list, n: int, seed: int) -> dict:
    rep = interleaving_report(credits[credits["request_id"].isin(ids[:n])], seed=seed)
    return {"preference": round(rep["preference"], 4), "ci95": [round(x, 4) for x in rep["ci95"]],
            "rel_clicks_ci95": [round(x, 4) for x in rep["rel_clicks_ci95"]]}


def ab_cell(champion: np.ndarray, challenger: np.ndarray) -> dict:
    """Welch's t-test of the challenger's clicks per search minus the champion's, with its 95% interval."""
    from scipy.stats import ttest_ind

    t = ttest_ind(challenger, champion, equal_var=False)
    lo, hi = t.confidence_interval(0.95)
    return {"diff": round(float(challenger.mean() - champion.mean()), 4), "ci95": [round(float(lo), 4),
                                                                                  round(float(hi), 4)]}


def run_seed(world: Path, rankers: dict, seed: int, sizes: list[int], tmp: Path) -> tuple[list[dict], dict]:
    """Every pair at every size for one seed: (rows, the largest size's per-search data for the projection).
    The A/B arms draw shoppers from seeds of their own side, so the identical pair's two arms are independent
    and a ranker's arm is replayed once per seed whatever the pair."""
    top = max(sizes)

    @cache
    def arm(name: str, side: int) -> np.ndarray:
        return clicks_per_search(world, rankers[name], top // 2, 10_000 * (side + 1) + seed)

    rows, pooled = [], {}
    for p, (pair, (champ, chall)) in enumerate(PAIRS.items()):
        credits, ids = interleaved(world, rankers[champ], rankers[chall], top, seed + 1000 * p, tmp)
        a, b = arm(champ, 0), arm(chall, 1)
        for n in sizes:
            rows.append({"pair": pair, "seed": seed, "searches": n,
                         "interleaving": interleaving_cell(credits, ids, n, seed),
                         "ab": ab_cell(a[: n // 2], b[: n // 2])})
        pooled[pair] = {"outcomes": outcomes(credits).to_numpy(float), "champion": a, "challenger": b}
    return rows, pooled


def _rejects(ci: list[float], identical: bool) -> bool:
    """The 95% interval excludes 0 on the challenger's side; either side for the identical pair, whose every
    rejection is a false positive."""
    return (ci[0] > 0 or ci[1] < 0) if identical else ci[0] > 0


def _share(cells: list[dict], method: str, ci: str, identical: bool) -> float:
    return round(float(np.mean([_rejects(c[method][ci], identical) for c in cells])), 3)


def power_table(rows: list[dict], pair: str, sizes: list[int]) -> list[dict]:
    identical = pair == "identical"
    out = []
    for n in sizes:
        cells = [r for r in rows if r["pair"] == pair and r["searches"] == n]
        out.append({"searches": n, "interleaving": _share(cells, "interleaving", "ci95", identical),
                    "interleaving_rel_clicks": _share(cells, "interleaving", "rel_clicks_ci95", identical),
                    "ab": _share(cells, "ab", "ci95", identical)})
    return out


def projected(pooled: list[dict], gap: float) -> dict[str, int | None]:
    """Searches for 80% power by the normal approximation, pooled over seeds at the largest size: beyond the
    measured grid, where an A/B test of a modest gap usually ends. Interleaving's from its measured mean and
    spread of per-search outcomes; the A/B's from the true gap and the arms' measured variances."""
    o = np.concatenate([x["outcomes"] for x in pooled])
    var = np.var(np.concatenate([x["champion"] for x in pooled]), ddof=1) + \
        np.var(np.concatenate([x["challenger"] for x in pooled]), ddof=1)
    il = int(np.ceil((Z80 * o.std(ddof=1) / o.mean()) ** 2)) if o.mean() > 0 else None
    ab = int(2 * np.ceil(Z80 ** 2 * var / gap ** 2)) if gap > 0 else None
    return {"interleaving": il, "ab": ab}


def first_reaching(table: list[dict], method: str, target: float = 0.8) -> int | None:
    return next((r["searches"] for r in table if r[method] >= target), None)


def summarize(rows: list[dict], pooled: list[dict], gaps: dict, sizes: list[int]) -> dict:
    out = {}
    for pair, (champ, chall) in PAIRS.items():
        table = power_table(rows, pair, sizes)
        s = {"champion": champ, "challenger": chall, "true_gap": gaps[pair], "table": table,
             "measures": "false-positive rate" if pair == "identical" else "power"}
        if pair != "identical":
            s["n_for_80pct_power"] = {m: first_reaching(table, m) for m in ("interleaving", "ab")}
            s["projected_n_for_80pct_power"] = projected([p[pair] for p in pooled], gaps[pair]["clicks_per_search"])
        out[pair] = s
    return out


def measure(sizes: list[int], seeds: int, tmp: Path) -> dict:
    from tqdm import tqdm

    world = tmp / "world"
    generate_world(world, seed=WORLD_SEED, cfg=WorldConfig(**WORLD), progress=False)
    rankers = fit_rankers(world)
    clicks = {name: true_clicks(world, r) for name, r in rankers.items()}
    gaps = {pair: true_gap(clicks[a], clicks[b]) for pair, (a, b) in PAIRS.items()}
    rows, pooled = [], []
    for seed in tqdm(range(seeds), desc="seeds"):
        r, p = run_seed(world, rankers, seed, sizes, tmp)
        rows += r
        pooled.append(p)
    return {"rankers": {n: {"families": list(RANKERS[n][0]), "trees": RANKERS[n][1],
                            "expected_clicks_per_search": {k: round(v, 5) for k, v in c.items()}}
                        for n, c in clicks.items()},
            "pairs": summarize(rows, pooled, gaps, sizes), "runs": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="bench_interleaving.json goes here")
    ap.add_argument("--seeds", type=int, default=None, help="replays per pair and size (default 10, --quick 4)")
    ap.add_argument("--searches", type=int, nargs="+", default=None, help=f"total searches N (default {DEFAULT_N})")
    ap.add_argument("--quick", action="store_true", help=f"N in {QUICK_N}, 4 seeds: about a minute")
    a = ap.parse_args(argv)
    sizes = sorted(a.searches or (QUICK_N if a.quick else DEFAULT_N))
    seeds = a.seeds or (4 if a.quick else 10)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(sizes, seeds, Path(tmp))
    res = {"benchmark": "interleaving", **stamp(), "world": {**WORLD, "seed": WORLD_SEED}, "depth": K,
           "searches": sizes, "seeds": seeds, "quick": a.quick, "alpha": 0.05, "target_power": 0.8,
           "ab_test": "Welch t-test on clicks per search, N/2 searches per ranker",
           "interleaving_test": "team draft, bootstrap 95% CI of the per-search preference (interleaving_report)",
           **res, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_interleaving.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: {f: v[f] for f in v if f not in ("champion", "challenger")}
                      for k, v in res["pairs"].items()}, indent=1))
    print(f"total {res['seconds']} s, peak RSS {res['peak_rss_mb']} MiB")
    return res


if __name__ == "__main__":
    main()
