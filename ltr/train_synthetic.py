"""A small seeded synthetic training frame for tests, benchmarks and smoke runs of the training stage.

It is *not* the built-in world (the lead's `ltr/data` world is the real default); it only has the shape of
a training frame: content and engagement disagree the way they do in shops (attractiveness mixes
relevance with popularity and discount), so label choices visibly move the metrics.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_training_frame(n_queries: int = 60, items_per_query: int = 30, seed: int = 0,
                             n_noise_features: int = 2) -> pd.DataFrame:
    """One row per (query, product) with features, LLM score, training and held-out engagement, grade."""
    rng = np.random.default_rng(seed)
    n = n_queries * items_per_query
    q = np.repeat(np.arange(n_queries), items_per_query)
    head = rng.random(n_queries) < 0.3
    grade = rng.choice(4, size=n, p=[0.35, 0.2, 0.2, 0.25])
    rel = grade / 3.0
    pop = rng.beta(1.2, 3.0, size=n)                    # popularity (e.g. rating_count, normalized)
    discount = rng.random(n) * (rng.random(n) < 0.3)
    attract = np.clip(0.05 + 0.45 * rel ** 2 + 0.35 * pop + 0.25 * discount, 0, 1)
    llm = np.clip(rel + rng.normal(0, 0.12, n), 0, 1)  # a decent but noisy grader
    volume = np.where(head[q], 400, 40)
    pos_bias = 1.0 / (1.0 + rng.integers(0, 10, n))    # where the old ranker happened to show it

    def sessions():
        imp = rng.poisson(volume * (0.3 + pos_bias))
        clk = rng.binomial(imp, np.clip(attract * pos_bias * 1.5, 0, 1))
        cart = rng.binomial(clk, np.clip(0.15 + 0.5 * rel * (0.5 + 0.5 * pop), 0, 1))
        buy = rng.binomial(cart, 0.4)
        return imp, clk, cart, buy

    imp, clk, cart, buy = sessions()
    h_imp, h_clk, h_cart, h_buy = sessions()
    ctr = (clk + 2.0) / (imp + 20.0)
    f = {
        "query_id": np.array([f"q{i:04d}" for i in range(n_queries)])[q],
        "product_id": np.array([f"p{i:06d}" for i in range(n)]),
        "ce_score": np.clip(rel + rng.normal(0, 0.25, n), 0, 1),
        "ce_purchase_score": np.clip(0.5 * rel + 0.5 * pop + rng.normal(0, 0.2, n), 0, 1),
        "bm25_title": np.clip(rel * 8 + rng.normal(0, 3, n), 0, None),
        "popularity": pop,
        "discount": discount,
        "price": rng.lognormal(3, 0.8, n),
        "ctr_smoothed": ctr,
    }
    for i in range(n_noise_features):
        f[f"noise_{i}"] = rng.normal(size=n)
    f["bm25_title"][rng.random(n) < 0.05] = np.nan      # missing values are allowed in features
    frame = pd.DataFrame(f)
    frame["content_score"] = llm
    frame["impressions"], frame["clicks"], frame["carts"], frame["purchases"] = imp, clk, cart, buy
    frame["grade"] = grade
    frame["segment"] = np.where(head[q], "head", "tail")
    frame["heldout_impressions"], frame["heldout_clicks"] = h_imp, h_clk
    frame["heldout_carts"], frame["heldout_purchases"] = h_cart, h_buy
    frame["click_propensity"] = attract
    return frame
