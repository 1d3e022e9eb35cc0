"""A position-based click model (PBM) with add-to-cart and purchase stages.

Why PBM: it separates *whether the shopper looked* (examination, a function of position only) from
*whether the item tempted them* (attractiveness, a function of the item), which is the structure that
makes engagement a biased proxy for relevance and that position-debiased features can undo:

    P(click | position k, item)  = examination(k) * attractiveness(item)
    examination(k)               = 1 / k ** eta
    attractiveness(item)         = sigmoid(bias + rel[grade] + w_pop * pop_z + w_price * cheap_z + w_disc * discount)
    P(cart | click)              = sigmoid(cart_bias + cart_rel[grade] + cart_price * cheap_z)
    P(purchase | cart)           = sigmoid(purchase_bias + purchase_rel[grade] + purchase_price * cheap_z
                                           + purchase_pop * pop_z)

`pop_z` is the z-score of log1p(popularity) and `cheap_z` the z-score of -log(price) among the query's
candidates (a shopper compares what is on the page; a missing price is average). Relevance moves clicks
only moderately while popularity, low price and discount move them a lot, so click-through and relevance
disagree within a query; relevance dominates carting and buying, so exact matches remain the best
converters overall (a shopper who buys usually buys what they asked for).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def examination(positions: np.ndarray | pd.Series | list[int], eta: float = 1.0) -> np.ndarray:
    """P(examined) at 1-based positions: 1 / position**eta."""
    pos = np.asarray(positions, dtype="float64")
    if pos.size and np.nanmin(pos) < 1:
        raise ValueError("positions must be 1-based (>= 1). Fix: add 1 to 0-based ranks.")
    return 1.0 / pos ** eta


def expected_clicks(attract: np.ndarray | pd.Series | list[float], positions: np.ndarray | pd.Series | list[int],
                    eta: float = 1.0) -> np.ndarray:
    """Expected clicks per item shown at `positions` under a PBM: attractiveness * examination.

    Engagement metrics reuse this: sum it over a ranking's top k to score that ranking counterfactually.
    """
    a = np.asarray(attract, dtype="float64")
    pos = np.asarray(positions)
    if a.shape != pos.shape:
        raise ValueError(f"attract and positions must have the same shape, got {a.shape} and {pos.shape}.")
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
        raise ValueError("attract must be probabilities in [0, 1]. Fix: pass ClickModel.probabilities(...)['attract'].")
    return a * examination(pos, eta)


def _group_z(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """z-score within each group; NaN (unknown) and constant groups map to 0 (average)."""
    s = pd.Series(values, dtype="float64")
    g = pd.Series(groups)
    mean = s.groupby(g, sort=False).transform("mean")
    std = s.groupby(g, sort=False).transform("std", ddof=0)
    z = (s - mean) / std.where(std > 1e-9)
    return z.fillna(0.0).to_numpy()


@dataclass(frozen=True)
class ClickModel:
    """PBM clicks, then cart and purchase conditional on the click. Defaults are the built-in world's."""

    eta: float = 0.8
    bias: float = -2.1
    relevance: tuple[float, float, float, float] = (0.0, 1.3, 2.3, 3.2)   # logit by grade I, C, S, E
    w_popularity: float = 0.9
    w_price: float = 0.55
    w_discount: float = 2.5
    cart_bias: float = -2.6
    cart_relevance: tuple[float, float, float, float] = (0.0, 0.8, 1.5, 2.6)
    cart_price: float = 0.35
    purchase_bias: float = -0.6
    purchase_relevance: tuple[float, float, float, float] = (0.0, 0.4, 0.9, 1.6)
    purchase_price: float = 0.35
    purchase_popularity: float = 0.25

    def _rel(self, table: tuple[float, float, float, float], grade: np.ndarray) -> np.ndarray:
        g = np.asarray(grade, dtype="float64")
        if g.size and (np.nanmin(g) < 0 or np.nanmax(g) > 3):
            raise ValueError("grade must be in [0, 3] (ESCI I/C/S/E = 0/1/2/3). Fix: map labels to 0..3.")
        return np.interp(g, [0.0, 1.0, 2.0, 3.0], table)

    def probabilities(self, pairs: pd.DataFrame, group: str = "query_id") -> pd.DataFrame:
        """Per-(query, product) attract / p_cart / p_purchase.

        `pairs` needs `grade` (0..3, may be fractional for an expected grade), `popularity` (>= 0) and
        `group`; `price` and `discount` (fraction 0..1) are optional. Z-scores are taken within `group`
        over the rows given, so pass each query's candidate set once (not its impressions).
        """
        for col in ("grade", "popularity", group):
            if col not in pairs.columns:
                raise ValueError(f"click model input is missing column '{col}'. Fix: add it "
                                 "(grade 0..3, popularity e.g. rating_count, query_id).")
        n = len(pairs)
        groups = pairs[group].to_numpy()
        pop = pd.to_numeric(pairs["popularity"], errors="coerce").to_numpy(dtype="float64")
        if np.nanmin(pop, initial=0.0) < 0:
            raise ValueError("column 'popularity' must be >= 0. Fix: use a count such as rating_count.")
        pop_z = _group_z(np.log1p(pop), groups)
        if "price" in pairs.columns:
            price = pd.to_numeric(pairs["price"], errors="coerce").to_numpy(dtype="float64")
            price = np.where(price > 0, price, np.nan)
            cheap_z = _group_z(-np.log(price), groups)
        else:
            cheap_z = np.zeros(n)
        disc = (pd.to_numeric(pairs["discount"], errors="coerce").fillna(0.0).to_numpy(dtype="float64")
                if "discount" in pairs.columns else np.zeros(n))
        grade = pairs["grade"].to_numpy(dtype="float64")
        attract = _sigmoid(self.bias + self._rel(self.relevance, grade) + self.w_popularity * pop_z
                           + self.w_price * cheap_z + self.w_discount * disc)
        p_cart = _sigmoid(self.cart_bias + self._rel(self.cart_relevance, grade) + self.cart_price * cheap_z)
        p_purchase = _sigmoid(self.purchase_bias + self._rel(self.purchase_relevance, grade)
                              + self.purchase_price * cheap_z + self.purchase_popularity * pop_z)
        return pd.DataFrame({"attract": attract, "p_cart": p_cart, "p_purchase": p_purchase}, index=pairs.index)

    def simulate(self, frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        """Sample clicked / added_to_cart / purchased for each impression row (vectorised).

        `frame` needs `position` (1-based) and either precomputed `attract`, `p_cart`, `p_purchase`
        columns or the inputs of `probabilities` (computed once per unique (query_id, product_id)).
        Returns a copy of `frame` with the three boolean columns added. Same rng state -> same result.
        """
        if "position" not in frame.columns:
            raise ValueError("click model input is missing column 'position'. Fix: add 1-based positions.")
        probs = ["attract", "p_cart", "p_purchase"]
        if all(c in frame.columns for c in probs):
            p = frame[probs]
        else:
            keys = ["query_id", "product_id"]
            uniq = frame.drop_duplicates(keys)
            pu = pd.concat([uniq[keys], self.probabilities(uniq)], axis=1)
            p = frame[keys].merge(pu, on=keys, how="left")[probs].set_axis(frame.index)
        u = rng.random((len(frame), 3))
        p_click = expected_clicks(p["attract"].to_numpy(), frame["position"].to_numpy(), self.eta)
        clicked = u[:, 0] < p_click
        cart = clicked & (u[:, 1] < p["p_cart"].to_numpy())
        bought = cart & (u[:, 2] < p["p_purchase"].to_numpy())
        out = frame.copy()
        out["clicked"] = clicked
        out["added_to_cart"] = cart
        out["purchased"] = bought
        return out


__all__ = ["ClickModel", "examination", "expected_clicks"]
