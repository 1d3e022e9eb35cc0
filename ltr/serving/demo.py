"""A small, real end-to-end setup of the service for tests, the benchmark and demos.

`demo_dataset` writes a seeded little shop (products, graded judgments, impressions);
`save_encoder` writes a cross-encoder dir (a tiny random BERT, or all-MiniLM-L6-v2 with a fresh head) that
`CrossEncoderScorer` and `BiEncoder` both load; `train_and_register` trains a real XGBoost LambdaMART on
request-time (+ optional engagement) features, logs it with `ltr.tracking.log_ranker` (the cross-encoder
as the run's `cross_encoder` artifact) and moves the `champion` alias to it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ltr.data.dataset import write_table
from ltr.data.schemas import query_id

COLORS = ["red", "blue", "black", "white", "green", "pink"]
TYPES = ["water bottle", "backpack", "running shoes", "desk lamp", "coffee mug", "yoga mat"]
BRANDS = ["Hydro Flask", "Osprey", "Nike", "Acme", "Stanley", None]
T0 = pd.Timestamp("2024-03-01", tz="UTC")


def demo_products(n: int = 72, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c, t, b = COLORS[i % 6], TYPES[(i // 6) % 6], BRANDS[(i * 5 + i // 6) % 6]
        size = int(rng.choice([16, 24, 32]))
        rows.append({"product_id": f"D{i:04d}", "title": f"{b or 'Generic'} {c} {t} {size} oz".strip(),
                     "description": None if i % 7 == 0 else f"A {c} {t} for every day, model {i}.",
                     "bullet_points": f"durable; {c}; {size} oz" if i % 5 else None, "brand": b, "color": c,
                     "category": f"Home > Goods > {t.title()}" if i % 9 else None,
                     "price": None if i % 11 == 0 else float(np.round(rng.uniform(5, 80), 2)),
                     "rating": float(np.round(rng.uniform(2.5, 5), 1)), "rating_count": float(rng.integers(0, 900))})
    return pd.DataFrame(rows)


def _grade(q_color: str | None, q_type: str, p: pd.Series) -> int:
    t_ok = q_type in p["title"]
    c_ok = q_color is None or p["color"] == q_color
    return 3 if t_ok and c_ok else 2 if t_ok else 1 if c_ok and q_color else 0


def demo_dataset(root: str | Path, n_queries: int = 12, n_products: int = 72, per_query: int = 12,
                 seed: int = 0, impressions: bool = True) -> Path:
    """Write products, judgments (grade by type/color match) and, optionally, 10 days of impressions."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    prods = demo_products(n_products, seed)
    judg, imps = [], []
    for k in range(n_queries):
        t, c = TYPES[k % 6], (COLORS[(k + k // 6) % 6] if k >= 3 else None)  # distinct for k < 36
        q = f"{c} {t}" if c else t
        same = np.flatnonzero(prods["title"].str.contains(t).to_numpy())  # half the candidates share the type
        other = np.setdiff1d(np.arange(len(prods)), same)
        half = min(per_query // 2, len(same))
        cand = np.concatenate([rng.choice(same, half, replace=False),
                               rng.choice(other, per_query - half, replace=False)])
        for i in cand:
            judg.append({"query": q, "product_id": prods.product_id[i], "grade": _grade(c, t, prods.iloc[i])})
        if impressions:
            for day in range(10):
                for pos, i in enumerate(rng.permutation(cand), start=1):
                    clicked = bool(rng.random() < 0.5 / pos + 0.1 * (prods.iloc[i]["rating_count"] > 400))
                    imps.append({"request_id": f"r{k}_{day}", "ts": T0 + pd.Timedelta(days=day, hours=10),
                                 "query_id": query_id(q), "product_id": prods.product_id[i], "position": pos,
                                 "clicked": clicked, "added_to_cart": clicked and rng.random() < 0.3,
                                 "purchased": False})
    write_table(prods, root / "products.parquet", "products")
    write_table(pd.DataFrame(judg), root / "judgments.parquet", "judgments")
    if impressions:
        write_table(pd.DataFrame(imps), root / "impressions.parquet", "impressions")
    return root


def save_encoder(out_dir: str | Path, tiny: bool = True, seed: int = 0) -> Path:
    """A cross-encoder dir: a tiny random BERT (2 layers, width 32) or, tiny=False, all-MiniLM-L6-v2 with a
    fresh 1-logit head. Either is loaded by CrossEncoderScorer (with the head) and BiEncoder (without)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from features.crossencoder import load_base_cross_encoder
    from ltr.data.encoder import default_encoder_path

    out = Path(out_dir)
    torch.manual_seed(seed)
    if tiny:
        tok = AutoTokenizer.from_pretrained(str(default_encoder_path()))
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512, num_labels=1)
        model = BertForSequenceClassification(cfg).eval()
        tok.model_max_length = 64
    else:
        model, tok = load_base_cross_encoder(None, 64)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def train_and_register(X: pd.DataFrame, grades: Sequence[int], qid: Sequence[str], model_name: str,
                       cross_encoder: str | Path | None = None, n_estimators: int = 30, seed: int = 0) -> str:
    """Fit XGBoost LambdaMART on (X, grades, qid), log it (and the cross-encoder) to the *current* MLflow
    tracking store, register it as `model_name` with alias champion; returns 'models:/NAME@champion'."""
    import mlflow

    from ltr import tracking as T
    from ltr.rankers import XGBLambdaMART

    model = XGBLambdaMART(n_estimators=n_estimators, max_depth=3, early_stopping_rounds=None, random_state=seed,
                          n_jobs=2).fit(X, np.asarray(grades, float), np.asarray(qid))
    with mlflow.start_run(run_name=f"{model_name}-demo"):
        info = T.log_ranker(model, X)
        if cross_encoder is not None:
            mlflow.log_artifacts(str(cross_encoder), artifact_path="cross_encoder")
    T.register_model(info.model_uri, model_name)
    return f"models:/{model_name}@{T.CHAMPION}"


__all__ = ["demo_dataset", "demo_products", "save_encoder", "train_and_register"]
