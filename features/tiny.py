"""A tiny hand-made dataset directory (tens of rows) so Feast tests and demos run in seconds."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ltr.data.dataset import write_table
from ltr.data.schemas import query_id

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def tiny_dataset(root: str | Path, n_products: int = 12) -> Path:
    """Write products, judgments and impressions for two queries; impressions span days 0..9 after T0."""
    root = Path(root)
    colors = ["black", "red", "blue", "white"]
    brands = ["Hydro Flask", "Stanley", "Nike", None]
    prods = pd.DataFrame({
        "product_id": [f"P{i:03d}" for i in range(n_products)],
        "title": [f"{brands[i % 4] or 'Generic'} {16 * (1 + i % 2)} oz water bottle {colors[i % 4]}"
                  for i in range(n_products)],
        "description": [None if i % 5 == 0 else f"insulated steel bottle number {i}" for i in range(n_products)],
        "bullet_points": [f"keeps drinks cold; {colors[i % 4]}" for i in range(n_products)],
        "brand": [brands[i % 4] for i in range(n_products)],
        "color": [colors[i % 4] for i in range(n_products)],
        "category": ["Kitchen > Drinkware > Water Bottles" if i % 3 else None for i in range(n_products)],
        "price": [None if i == 1 else 10.0 + i for i in range(n_products)],
        "rating": [4.0 + (i % 10) / 10 for i in range(n_products)],
        "rating_count": [float(10 * i) for i in range(n_products)],
    })
    queries = ["hydro flask 32 oz", "red water bottle"]
    judg = pd.DataFrame([{"query": q, "product_id": f"P{i:03d}", "grade": (i + k) % 4}
                         for k, q in enumerate(queries) for i in range(0, n_products, 2)])
    rows = []
    for day in range(10):
        for k, q in enumerate(queries):
            for pos, i in enumerate(range(k, n_products, 2), start=1):
                rows.append({"request_id": f"r{day}_{k}", "ts": T0 + pd.Timedelta(days=day, hours=12),
                             "query_id": query_id(q), "product_id": f"P{i:03d}", "position": pos,
                             "clicked": (day + i) % 3 == 0, "added_to_cart": (day + i) % 6 == 0,
                             "purchased": (day + i) % 12 == 0})
    write_table(prods, root / "products.parquet", "products")
    write_table(judg, root / "judgments.parquet", "judgments")
    write_table(pd.DataFrame(rows), root / "impressions.parquet", "impressions")
    return root
