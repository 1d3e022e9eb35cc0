"""An impression log as the counterfactual estimators need it: integer codes for queries, pairs and searches.

Why a separate container: the propensity fit, the offline estimators and their bootstraps all sum
per-impression values into per-pair, per-query and per-search totals many times over. Coding the keys
once (and refusing a log that cannot answer the question, with the field and the fix in the message)
keeps each of those sums one `np.bincount`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: the outcomes an estimate can be made for: column of the impression log (ltr.data.schemas.IMPRESSIONS)
OUTCOMES = ("clicked", "added_to_cart", "purchased")
KEYS = ("request_id", "query_id", "product_id", "position")


class CounterfactualError(ValueError):
    """A log or a ranking the estimators cannot use. The message names the field and the fix."""


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), pd.Index(uniques)


@dataclass(frozen=True)
class ImpressionLog:
    """One row per shown result. Arrays are aligned by impression; `pairs` and `queries` decode the codes.

    query, pair, search: codes into `queries`, `pairs` (query_id, product_id) and the searches
    (request ids); position: 1-based; outcomes: float 0/1 arrays by column name.
    """

    query: np.ndarray
    pair: np.ndarray
    search: np.ndarray
    position: np.ndarray
    outcomes: dict[str, np.ndarray]
    queries: pd.Index
    pairs: pd.DataFrame
    search_query: np.ndarray          # the query code of each search

    @classmethod
    def from_frame(cls, impressions: pd.DataFrame, outcomes: Sequence[str] = ("clicked", "added_to_cart"),
                   where: str = "impressions") -> ImpressionLog:
        """Validate and code a log with the columns of ltr.data.schemas.IMPRESSIONS (ts and unused outcomes
        may be absent). Refuses a log with no rows, a missing column, a non-positive position, or no click."""
        if not isinstance(impressions, pd.DataFrame):
            raise CounterfactualError(f"{where}: expected a DataFrame of impressions, got "
                                      f"{type(impressions).__name__}. Fix: pass Dataset.impressions.")
        unknown = [o for o in outcomes if o not in OUTCOMES]
        if unknown:
            raise CounterfactualError(f"unknown outcome(s) {unknown}. Fix: use some of {list(OUTCOMES)}.")
        for col in (*KEYS, *outcomes):
            if col not in impressions.columns:
                raise CounterfactualError(
                    f"{where} is missing column '{col}'. Fix: the log needs {', '.join((*KEYS, *outcomes))} "
                    "(one row per shown result, position 1-based), as impressions.parquet holds them "
                    "(`ltr world`, `ltr ingest-ubi`).")
        if impressions.empty:
            raise CounterfactualError(f"{where} has no rows. Fix: point --logs at a dataset whose "
                                      "impressions.parquet holds the searches to learn from.")
        pos = pd.to_numeric(impressions["position"], errors="coerce").to_numpy(dtype="float64")
        if np.isnan(pos).any() or (pos < 1).any() or (pos != np.round(pos)).any():
            raise CounterfactualError(f"{where}: column 'position' must hold integers >= 1. Fix: add 1 to "
                                      "0-based ranks (UBI's position.ordinal is 0-based).")
        ys = {o: impressions[o].fillna(False).astype(bool).to_numpy(dtype="float64") for o in outcomes}
        if "clicked" in ys and ys["clicked"].sum() == 0:
            raise CounterfactualError(f"{where}: column 'clicked' has no click in {len(impressions)} impressions; "
                                      "nothing tells examined from ignored. Fix: collect logs with click events "
                                      "(UBI `click` actions) or check that clicks were ingested.")
        return cls._coded(impressions, pos.astype(np.int64), ys)

    @classmethod
    def _coded(cls, imp: pd.DataFrame, pos: np.ndarray, ys: dict[str, np.ndarray]) -> ImpressionLog:
        query, queries = _codes(imp["query_id"].astype(str))
        pair_key = imp["query_id"].astype(str) + "\x1f" + imp["product_id"].astype(str)
        pair, pair_uniques = _codes(pair_key)
        split = pair_uniques.str.split("\x1f", n=1)
        pairs = pd.DataFrame({"query_id": split.str[0], "product_id": split.str[1]})
        search, _ = _codes(imp["request_id"].astype(str))
        search_query = np.full(search.max() + 1, -1, dtype=np.int64)
        search_query[search] = query
        if (search_query[search] != query).any():
            raise CounterfactualError("impressions: a request_id holds more than one query_id. Fix: one request "
                                      "id per search (UBI's query_id, the service's request_id).")
        return cls(query, pair, search, pos, ys, queries, pairs, search_query)

    @property
    def n_searches(self) -> int:
        return len(self.search_query)

    @property
    def pair_query(self) -> np.ndarray:
        """The query code of each pair."""
        return self.queries.get_indexer(self.pairs["query_id"])

    def searches_per_query(self, search_weight: np.ndarray | None = None) -> np.ndarray:
        """Searches (or their bootstrap weights) per query code."""
        return np.bincount(self.search_query, weights=search_weight, minlength=len(self.queries))

    def pair_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Pair code of each (query_id, product_id) row of `frame`; -1 where the log never showed the pair."""
        key = frame["query_id"].astype(str) + "\x1f" + frame["product_id"].astype(str)
        logged = self.pairs["query_id"] + "\x1f" + self.pairs["product_id"]
        return pd.Index(logged).get_indexer(key)


def bootstrap_weights(log: ImpressionLog, n_boot: int, unit: str, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_searches) Poisson(1) weights: one per search (unit='search') or shared by all searches of a
    query (unit='query'). Why Poisson: each replicate is a weighted sum, so it needs no resampled copy of the
    log, and for hundreds of units it is as good as the multinomial bootstrap."""
    if unit == "search":
        return rng.poisson(1.0, (n_boot, log.n_searches)).astype("float64")
    if unit == "query":
        return rng.poisson(1.0, (n_boot, len(log.queries))).astype("float64")[:, log.search_query]
    raise CounterfactualError(f"bootstrap unit={unit!r}. Fix: use 'search' (this traffic again) or 'query' "
                              "(new queries from the same population).")


__all__ = ["CounterfactualError", "ImpressionLog", "OUTCOMES", "bootstrap_weights"]
