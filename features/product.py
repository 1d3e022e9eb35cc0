"""Product features: price, rating, popularity (log1p of rating_count), text lengths, category depth.

Unknown stays unknown: a missing price or rating is NaN (the ranker learns what missing means),
never 0, which would read as "free" or "hated". A catalog without a price (or rating, bullets, ...)
column at all is the same case for every product: its features are NaN, as in training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ltr.data.dataset import complete_products

from .names import PRODUCT

PRODUCT_FEATURES = PRODUCT  # declared in features/names.py


def _n_words(s: pd.Series) -> np.ndarray:
    return s.map(lambda v: float(len(v.split())) if isinstance(v, str) else np.nan).to_numpy(dtype=np.float64)


def product_features(products: pd.DataFrame) -> pd.DataFrame:
    """product_id + PRODUCT_FEATURES (float64) for each product of a PRODUCTS table."""
    p = complete_products(products, where="product_features")
    price = p["price"].astype("float64")
    out = pd.DataFrame({
        "product_id": p["product_id"].to_numpy(),
        "prod_price": price.to_numpy(),
        "prod_log_price": np.log1p(price.to_numpy()),
        "prod_rating": p["rating"].astype("float64").to_numpy(),
        "prod_log_rating_count": np.log1p(p["rating_count"].astype("float64").to_numpy()),
        "prod_title_len": _n_words(p["title"]),
        "prod_bullets_len": _n_words(p["bullet_points"]),
        "prod_desc_len": _n_words(p["description"]),
        "prod_category_depth": p["category"].map(
            lambda c: float(len([x for x in c.split(">") if x.strip()])) if isinstance(c, str) else np.nan
        ).to_numpy(dtype=np.float64),
        "prod_has_brand": p["brand"].map(lambda b: 1.0 if isinstance(b, str) and b.strip() else 0.0)
        .to_numpy(dtype=np.float64),
    })
    return out
