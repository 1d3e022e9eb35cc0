"""The built-in shop world: a seeded synthetic catalog, queries, candidates, ground truth, noisy human
judgments and simulated engagement logs, written as a dataset directory (see `dataset.py`).

Why synthetic: it runs anywhere with no download, its ground truth is exact (grades follow from product
structure: type, brand, color, gender, size, material, feature), and its engagement is biased the way
real shops' is (popularity, low price and discounts attract clicks; relevance drives purchases), so the
platform's claim (LLM/content labels beat engagement labels on relevance at little engagement cost) can
be tested end to end. Determinism: one numpy Generator(seed), stable sorts, a fixed epoch, no wall clock.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from ltr.data.config import StrictConfig
from ltr.data.dataset import write_metadata, write_table
from ltr.data.schemas import (
    CANDIDATES,
    IMPRESSIONS,
    JUDGMENTS,
    PRODUCTS,
    QUERIES,
    TRUTH,
    query_id,
)

from .click_model import ClickModel
from .sessions import (
    EPOCH,
    baseline_scores,
    engagement_report,
    lexical_overlap,
    simulate_sessions,
    tokens,
)
from .vocab import (
    DESCRIPTION_CLOSERS,
    DESCRIPTION_MIDDLES,
    DESCRIPTION_OPENERS,
    GENDERS,
    KEYBOARD_NEIGHBOURS,
    PRODUCT_TYPES,
    TAIL_FILLERS,
    TYPE_INDEX,
    ProductType,
)

GENERATOR_VERSION = "world-1"
GRADE_LABEL = {3: "E", 2: "S", 1: "C", 0: "I"}
QUERY_TYPES = ("broad", "attribute", "brand", "misspelt", "tail")
ATTRS = ("brand", "gender", "color", "feature", "material", "size")

# Annotator confusion P(recorded | true): mostly between adjacent grades, E/S the commonest mix-up.
_CONFUSION = np.array([
    # recorded I     C     S     E
    [0.86, 0.08, 0.04, 0.02],   # true I
    [0.08, 0.76, 0.12, 0.04],   # true C
    [0.04, 0.06, 0.78, 0.12],   # true S
    [0.02, 0.02, 0.12, 0.84],   # true E
])


class WorldConfig(StrictConfig):
    """Size and behaviour of the built-in world. Defaults give ~6k products, 500 queries, ~250k impressions."""

    n_products: int = Field(6000, ge=100, description="catalog size (>= 5000 for the default world)")
    n_queries: int = Field(500, ge=10, description="distinct queries")
    n_candidates: int = Field(40, ge=5, description="candidates per query from the first-stage retriever")
    judged_fraction: float = Field(0.10, gt=0, le=1, description="share of candidate pairs with a human label")
    annotator_noise: float = Field(1.0, ge=0, le=3, description="scales the off-diagonal annotator confusion")
    query_mix: dict[str, float] = Field(
        default_factory=lambda: {"broad": 0.15, "attribute": 0.30, "brand": 0.20, "misspelt": 0.15, "tail": 0.20})
    head_share: float = Field(0.15, gt=0, lt=1, description="share of queries in the head segment")
    torso_share: float = Field(0.35, gt=0, lt=1, description="share of queries in the torso segment")
    days: int = Field(28, ge=1, description="length of the engagement log in days, from 2026-09-01 UTC")
    sessions: int = Field(25000, ge=1, description="search sessions in the log (each shows `depth` results)")
    depth: int = Field(10, ge=1, le=50, description="results shown per search page")
    ranker_noise: float = Field(0.6, ge=0, description="day-to-day churn of the production ranker")
    min_impressions: int = Field(30, ge=1, description="pairs need this many impressions for the CTR Spearman")
    click_model: dict[str, Any] = Field(default_factory=dict, description="overrides of ClickModel fields")

    @field_validator("query_mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(QUERY_TYPES)
        if unknown:
            raise ValueError(f"unknown query type(s) {sorted(unknown)}; use {list(QUERY_TYPES)}")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("query_mix weights must be >= 0 with a positive sum")
        return v

    @field_validator("click_model")
    @classmethod
    def _cm(cls, v: dict[str, Any]) -> dict[str, Any]:
        fields = set(ClickModel.__dataclass_fields__)
        unknown = set(v) - fields
        if unknown:
            raise ValueError(f"unknown click_model field(s) {sorted(unknown)}; use {sorted(fields)}")
        return v


# --- catalog -------------------------------------------------------------------------------------

def _size_phrase(t: ProductType, size: str) -> str:
    if size == "Standard":
        return ""
    return f"{t.size_label} {size}" if t.size_label else size


def _join(parts: list[str], sep: str = ", ") -> str:
    return sep.join(p for p in (x.strip() for x in parts) if p)


def _make_products(cfg: WorldConfig, rng: np.random.Generator) -> pd.DataFrame:
    types = PRODUCT_TYPES
    w = np.array([0.6 + t.demand for t in types])
    counts = np.maximum(20, np.floor(w / w.sum() * cfg.n_products)).astype(int)
    counts[np.argmax(w)] += cfg.n_products - counts.sum()  # exact total (may shrink the largest for tiny worlds)
    brand_names = sorted({b for t in types for b in t.brands})
    brand_prem = dict(zip(brand_names, np.exp(rng.normal(0, 0.25, len(brand_names)))))
    brand_pop = dict(zip(brand_names, rng.normal(0, 0.8, len(brand_names))))
    rows = []
    for ti, t in enumerate(types):
        n = int(counts[ti])
        if n <= 0:
            continue
        bw = 1.0 / np.arange(1, len(t.brands) + 1) ** 0.7
        brands = rng.choice(len(t.brands), n, p=bw / bw.sum())
        colors = rng.integers(0, len(t.colors), n)
        sizes = rng.integers(0, len(t.sizes), n)
        mats = rng.integers(0, len(t.materials), n)
        feats = rng.integers(0, len(t.features), n)
        genders = rng.choice(3, n, p=[0.45, 0.45, 0.10]) if t.gendered else np.full(n, -1)
        price_noise = rng.lognormal(0.0, 0.35, n)
        pop_noise = rng.normal(0.0, 1.5, n)
        disc_draw = rng.random(n)
        disc_lvl = rng.choice(np.array([0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50]), n)
        rating_noise = rng.normal(0.0, 0.3, n)
        layout = rng.integers(0, 3, n)
        n_bul = rng.integers(3, 5, n)
        bul_perm = rng.random((n, len(t.bullets))).argsort(axis=1)
        desc_pick = rng.integers(0, 12, (n, 3))
        for i in range(n):
            brand = t.brands[brands[i]]
            color, size, mat, feat = t.colors[colors[i]], t.sizes[sizes[i]], t.materials[mats[i]], t.features[feats[i]]
            gender = GENDERS[genders[i]] if genders[i] >= 0 else ""
            size_ph = _size_phrase(t, size)
            noun = t.noun
            if layout[i] == 0:
                title = _join([_join([brand, gender, noun], " "), f"{feat} {mat}", color, size_ph])
            elif layout[i] == 1:
                who = f"for {gender[:-2]}" if gender else ""
                title = _join([f"{brand} {noun} {who}".strip() + " - " + feat, mat, color, size_ph])
            else:
                title = _join([_join([brand, gender, feat, mat, noun], " "), color, size_ph])
            fmt = {"brand": brand, "color": color, "size": size, "material": mat, "feature": feat, "noun": noun}
            bullets = [t.bullets[j].format(**fmt) for j in bul_perm[i, : n_bul[i]]]
            bullets.append(f"Color: {color}" + (f"; {size_ph}" if size_ph else ""))
            lo = dict(fmt, feature_l=feat.lower(), noun_l=noun.lower(), material_l=mat.lower(), color_l=color.lower())
            desc = " ".join(x for x in (
                DESCRIPTION_OPENERS[desc_pick[i, 0] % len(DESCRIPTION_OPENERS)].format(**lo),
                DESCRIPTION_MIDDLES[desc_pick[i, 1] % len(DESCRIPTION_MIDDLES)].format(**lo),
                DESCRIPTION_CLOSERS[desc_pick[i, 2] % len(DESCRIPTION_CLOSERS)].format(**lo)) if x)
            price = max(1.99, np.round(t.price * brand_prem[brand] * price_noise[i]) - 0.01)
            discount = float(disc_lvl[i]) if disc_draw[i] < 0.3 else 0.0
            pop = float(np.floor(np.exp(3.5 + 0.6 * np.log(t.demand) + brand_pop[brand] + pop_noise[i])))
            rating = float(np.clip(np.round(4.2 + 0.05 * np.log1p(pop) + rating_noise[i], 1), 1.0, 5.0))
            rows.append((t.key, brand, color, size, mat, feat, gender, title, desc, "\n".join(bullets), t.category,
                         float(price), rating, pop, discount))
    cols = ["product_type", "brand", "color", "size", "material", "feature", "gender", "title", "description",
            "bullet_points", "category", "price", "rating", "rating_count", "discount"]
    df = pd.DataFrame(rows, columns=cols)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)  # ids must not reveal the type
    df.insert(0, "product_id", [f"P{i:06d}" for i in range(1, len(df) + 1)])
    df["popularity"] = df["rating_count"]
    order = ["product_id", "title", "description", "bullet_points", "brand", "color", "category", "price", "rating",
             "rating_count", "product_type", "size", "material", "feature", "gender", "discount", "popularity"]
    return df[order]


# --- queries -------------------------------------------------------------------------------------

def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    op = int(rng.integers(0, 4))
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    nb = KEYBOARD_NEIGHBOURS.get(word[i], "")
    return word[:i] + (nb[int(rng.integers(0, len(nb)))] if nb else word[i]) + word[i + 1:]


def _render_query(t: ProductType | None, intent: dict[str, str], rng: np.random.Generator) -> str:
    pre, post = [], []
    for a in ("brand", "gender"):
        if a in intent:
            pre.append(intent[a].lower())
    for a in ("color", "feature", "material"):
        if a in intent:
            (post if rng.random() < 0.25 else pre).append(intent[a].lower())
    noun = t.query_nouns[int(rng.integers(0, len(t.query_nouns)))] if t is not None else ""
    if "size" in intent and t is not None:
        s = intent["size"].lower()
        post.append(f"size {s}" if t.size_label == "Size" else (f"for {s}" if t.size_label == "for" else s))
    return " ".join(x for x in pre + [noun] + post if x).replace('"', " inch").strip()


def _make_queries(cfg: WorldConfig, products: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    mix = np.array([cfg.query_mix.get(k, 0.0) for k in QUERY_TYPES])
    mix = mix / mix.sum()
    type_w = np.array([t.demand for t in PRODUCT_TYPES])
    type_w = type_w / type_w.sum()
    by_type = products.groupby("product_type", sort=True).indices
    present = np.array([t.key in by_type for t in PRODUCT_TYPES])
    type_w = np.where(present, type_w, 0.0)
    type_w = type_w / type_w.sum()
    volume_base = {"broad": 3.0, "brand": 2.0, "attribute": 1.0, "misspelt": 0.4, "tail": 0.2}
    rows, seen, attempts = [], set(), 0
    while len(rows) < cfg.n_queries:
        attempts += 1
        if attempts > cfg.n_queries * 50:
            raise RuntimeError("could not generate enough distinct queries. Fix: lower n_queries or raise n_products.")
        qtype = QUERY_TYPES[int(rng.choice(len(QUERY_TYPES), p=mix))]
        ti = int(rng.choice(len(PRODUCT_TYPES), p=type_w))
        t = PRODUCT_TYPES[ti]
        seed_row = products.iloc[int(rng.choice(by_type[t.key]))]  # a real product: every query has an exact match
        avail = [a for a in ("gender", "color", "feature", "material", "size")
                 if seed_row[a] and not (a == "size" and seed_row[a] == "Standard")
                 and not (a in ("color", "material") and len(getattr(t, a + "s")) < 2)]
        base = qtype if qtype != "misspelt" else QUERY_TYPES[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
        intent: dict[str, str] = {}
        qt: ProductType | None = t
        if base == "attribute":
            k = min(len(avail), int(rng.integers(1, 3)))
            for a in rng.choice(avail, k, replace=False) if k else []:
                intent[str(a)] = seed_row[str(a)]
        elif base == "brand":
            intent["brand"] = seed_row["brand"]
            if rng.random() < 0.1:
                qt = None  # brand-only query: any product of the brand is what they asked for
            elif avail and rng.random() < 0.3:
                a = str(rng.choice(avail))
                intent[a] = seed_row[a]
        elif base == "tail":
            k = min(len(avail), int(rng.integers(2, 5)))
            for a in rng.choice(avail, k, replace=False) if k else []:
                intent[str(a)] = seed_row[str(a)]
            if rng.random() < 0.6:
                intent["brand"] = seed_row["brand"]
        text = _render_query(qt, intent, rng) if qt is not None else seed_row["brand"].lower()
        if base == "tail" and rng.random() < 0.35:
            filler = TAIL_FILLERS[int(rng.integers(0, len(TAIL_FILLERS)))]
            text = f"{filler} {text}" if rng.random() < 0.5 else f"{text} {filler}"
        if qtype == "misspelt":
            words = text.split(" ")
            cand = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
            if not cand:
                continue
            wi = cand[int(rng.integers(0, len(cand)))]
            words[wi] = _typo(words[wi], rng)
            text = " ".join(words)
        qid = query_id(text)
        if qid in seen:
            continue
        seen.add(qid)
        vol = volume_base[qtype] * (t.demand if qt is not None else 1.0) * float(rng.lognormal(0.0, 0.6))
        rows.append({"query_id": qid, "query": text, "query_type": qtype, "product_type": qt.key if qt else None,
                     **{f"q_{a}": intent.get(a) for a in ATTRS}, "volume": vol})
    q = pd.DataFrame(rows)
    rank = q["volume"].rank(ascending=False, method="first").to_numpy()
    n = len(q)
    q["segment"] = np.where(rank <= cfg.head_share * n, "head",
                            np.where(rank <= (cfg.head_share + cfg.torso_share) * n, "torso", "tail"))
    return q


# --- ground truth and candidates -----------------------------------------------------------------

def _grades_for(q: pd.Series, prod_type: np.ndarray, attrs: dict[str, np.ndarray]) -> np.ndarray:
    """Exact ESCI grade of every product for one query, from structure (vectorised over the catalog)."""
    mism = np.zeros(len(prod_type), dtype=int)
    for a in ATTRS:
        v = q[f"q_{a}"]
        if isinstance(v, str) and v:
            mism += attrs[a] != v
    if q["product_type"] is None or (isinstance(q["product_type"], float)):
        return np.where(mism == 0, 3, 0)  # brand-only query
    t = PRODUCT_TYPES[TYPE_INDEX[q["product_type"]]]
    same = prod_type == t.key
    sub = np.isin(prod_type, t.substitutes)
    comp = np.isin(prod_type, t.complements)
    return np.where(same, np.where(mism == 0, 3, 2),
                    np.where(sub & (mism == 0), 2, np.where(comp, 1, 0))).astype(int)


def _take(pool: np.ndarray, k: int, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pool = pool[~taken[pool]]
    if k <= 0 or len(pool) == 0:
        return pool[:0]
    pick = pool if len(pool) <= k else rng.choice(pool, k, replace=False)
    taken[pick] = True
    return pick


def _make_candidates(cfg: WorldConfig, products: pd.DataFrame, queries: pd.DataFrame, rng: np.random.Generator,
                     progress: bool) -> pd.DataFrame:
    ptype = products["product_type"].to_numpy()
    attrs = {a: products[a].to_numpy() for a in ATTRS}
    pop = products["popularity"].to_numpy()
    bestsellers = np.argsort(-pop, kind="stable")[: max(50, len(products) // 20)]
    inv: dict[str, list[int]] = {}
    for i, title in enumerate(products["title"]):
        for tok in tokens(title):
            inv.setdefault(tok, []).append(i)
    inv_arr = {k: np.array(v) for k, v in inv.items()}
    n_prod = len(products)
    n_c = min(cfg.n_candidates, n_prod)
    out = []
    for _, q in tqdm(queries.iterrows(), total=len(queries), desc="candidates", disable=not progress, leave=False):
        g = _grades_for(q, ptype, attrs)
        taken = np.zeros(n_prod, dtype=bool)
        qtok = [tok for tok in tokens(q["query"]) if len(tok) > 2]
        lex = np.unique(np.concatenate([inv_arr[tok] for tok in qtok if tok in inv_arr] or [np.array([], int)]))
        lex = lex[g[lex] == 0]
        qt = q["product_type"] if isinstance(q["product_type"], str) else None
        t = PRODUCT_TYPES[TYPE_INDEX[qt]] if qt else None
        same_brand = (np.flatnonzero((attrs["brand"] == q["q_brand"]) & (g == 0)) if isinstance(q["q_brand"], str)
                      else np.array([], int))
        sub = np.flatnonzero(np.isin(ptype, t.substitutes)) if t else np.array([], int)
        comp = np.flatnonzero(g == 1)
        quotas = [(np.flatnonzero(g == 3), int(n_c * 0.35)), (np.flatnonzero((g == 2) & (ptype == qt)), int(n_c * 0.2)),
                  (sub, int(n_c * 0.12)), (comp, int(n_c * 0.12)), (same_brand, int(n_c * 0.08)),
                  (lex, int(n_c * 0.1)), (bestsellers, max(1, int(n_c * 0.05)))]
        picks = [_take(pool, k, taken, rng) for pool, k in quotas]
        short = n_c - sum(len(p) for p in picks)
        for pool, _ in quotas[1:6]:  # near-misses fill a short list before random noise does
            if short <= 0:
                break
            extra = _take(pool, short, taken, rng)
            picks.append(extra)
            short -= len(extra)
        if short > 0:
            picks.append(_take(np.arange(n_prod), short, taken, rng))
        idx = np.concatenate(picks)
        out.append(pd.DataFrame({"query_id": q["query_id"], "pidx": idx, "grade": g[idx]}))
    cand = pd.concat(out, ignore_index=True)
    cand["product_id"] = products["product_id"].to_numpy()[cand["pidx"]]
    return cand


# --- the whole world -----------------------------------------------------------------------------

def _noisy_judgments(truth: pd.DataFrame, queries: pd.DataFrame, cfg: WorldConfig,
                     rng: np.random.Generator) -> pd.DataFrame:
    conf = _CONFUSION.copy()
    off = conf * (1 - np.eye(4)) * cfg.annotator_noise
    conf = off + np.diag(np.clip(1 - off.sum(axis=1), 0, 1))
    conf = conf / conf.sum(axis=1, keepdims=True)
    pick = []
    for idx in truth.groupby("query_id", sort=True).indices.values():
        k = int(np.floor(len(idx) * cfg.judged_fraction + rng.random()))  # unbiased rounding: ~fraction overall
        if k:
            pick.append(rng.choice(idx, min(k, len(idx)), replace=False))
    sel = truth.iloc[np.sort(np.concatenate(pick))] if pick else truth.iloc[:0]
    cum = conf.cumsum(axis=1)[sel["grade"].to_numpy()]
    u = rng.random(len(sel))[:, None]
    noisy = np.minimum((u > cum).sum(axis=1), 3)
    qtext = queries.set_index("query_id")["query"]
    return pd.DataFrame({"query": qtext.reindex(sel["query_id"]).to_numpy(), "product_id": sel["product_id"].to_numpy(),
                         "grade": noisy.astype("int64"), "query_id": sel["query_id"].to_numpy(),
                         "esci_label": [GRADE_LABEL[int(x)] for x in noisy]})


def _rank_candidates(cand: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame,
                     rng: np.random.Generator) -> pd.DataFrame:
    """The first-stage retriever's order: lexical overlap plus a noisy semantic signal (decent, no oracle)."""
    pidx = cand["pidx"].to_numpy()
    ptext = (products["title"] + " " + products["brand"].fillna("")).to_numpy()
    qtext = queries.set_index("query_id")["query"]
    cand["lexical"] = lexical_overlap(qtext.reindex(cand["query_id"]).tolist(), ptext[pidx].tolist())
    # the semantic part sees product *types* (what an embedding captures), never the ground-truth grade
    ptype = products["product_type"].to_numpy()[pidx]
    qtype = queries.set_index("query_id")["product_type"].reindex(cand["query_id"]).to_numpy()
    rel_types = {t.key: (set(t.substitutes), set(t.complements)) for t in PRODUCT_TYPES}
    sem = np.array([0.3 if pt == qt else 0.2 if qt in rel_types and pt in rel_types[qt][0]
                    else 0.1 if qt in rel_types and pt in rel_types[qt][1] else 0.0
                    for pt, qt in zip(ptype, qtype)])
    cand["retrieval_score"] = np.round(cand["lexical"] + sem + rng.normal(0, 0.2, len(cand)), 6)
    cand = cand.sort_values(["query_id", "retrieval_score", "product_id"], ascending=[True, False, True],
                            kind="stable").reset_index(drop=True)
    cand["retrieval_rank"] = cand.groupby("query_id", sort=False).cumcount() + 1
    return cand


def _simulate_logs(cand: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, cfg: WorldConfig,
                   rng: np.random.Generator, progress: bool) -> pd.DataFrame:
    """Sessions per query in proportion to its volume, shown by the baseline ranker, clicked by the PBM."""
    for col in ("popularity", "price", "discount"):
        cand[col] = products[col].to_numpy()[cand["pidx"].to_numpy()]
    cand["baseline_score"] = baseline_scores(cand)
    vol = queries.set_index("query_id")["volume"]
    share = vol / vol.sum()
    sessions = {q: max(2, round(s * cfg.sessions)) for q, s in share.items()}
    return simulate_sessions(cand, sessions, rng, click_model=ClickModel(**cfg.click_model), days=cfg.days,
                             depth=cfg.depth, ranker_noise=cfg.ranker_noise, progress=progress)


def _write_tables(out: Path, products, queries, cand, truth, judgments, imps) -> None:
    out.mkdir(parents=True, exist_ok=True)
    qcols = ["query_id", "query", "segment", "query_type", "product_type"] + [f"q_{a}" for a in ATTRS] + ["volume"]
    write_table(products, out / "products.parquet", PRODUCTS)
    write_table(queries[qcols].sort_values("query_id").reset_index(drop=True), out / "queries.parquet", QUERIES)
    write_table(cand[["query_id", "product_id", "retrieval_rank", "retrieval_score"]], out / "candidates.parquet",
                CANDIDATES)
    write_table(truth, out / "truth.parquet", TRUTH)
    write_table(judgments, out / "judgments.parquet", JUDGMENTS)
    write_table(imps.drop(columns=["pair_idx"]), out / "impressions.parquet", IMPRESSIONS)


def _metadata(seed: int, cfg: WorldConfig, products, queries, cand, truth, judgments, imps,
              report: dict[str, Any]) -> dict[str, Any]:
    grade_dist = truth["grade"].value_counts().sort_index()
    return {
        "source": "world", "generator": GENERATOR_VERSION, "seed": int(seed), "simulated_engagement": True,
        "config": cfg.model_dump(), "epoch": str(EPOCH),
        "counts": {"products": len(products), "product_types": int(products["product_type"].nunique()),
                   "brands": int(products["brand"].nunique()), "queries": len(queries), "candidates": len(cand),
                   "judgments": len(judgments), "impressions": len(imps)},
        "truth_grade_distribution": {GRADE_LABEL[int(g)]: int(n) for g, n in grade_dist.items()},
        "judgment_agreement_with_truth": round(float(
            (judgments.merge(truth, on=["query_id", "product_id"], suffixes=("", "_t"))
             .eval("grade == grade_t")).mean()), 4) if len(judgments) else None,
        "query_types": {k: int(v) for k, v in queries["query_type"].value_counts().sort_index().items()},
        "segments": {k: int(v) for k, v in queries["segment"].value_counts().sort_index().items()},
        "spearman_grade_ctr": report["spearman_grade_ctr"],
        "engagement": report,
    }


def generate_world(out_dir: str | Path, seed: int = 7, cfg: WorldConfig | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Write the built-in world to `out_dir` and return a summary (also stored in metadata.json).

    Tables: products, queries, candidates, truth (evaluation only), judgments (noisy ~10% subset),
    impressions (simulated engagement). Same seed and config -> byte-identical parquet files: every step
    draws from one generator in a fixed order.
    """
    cfg = cfg or WorldConfig()
    if not isinstance(cfg, WorldConfig):
        raise TypeError(f"cfg must be a WorldConfig, got {type(cfg).__name__}. Fix: WorldConfig(**your_dict).")
    t0 = time.perf_counter()
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    steps = tqdm(total=6, desc="world", disable=not progress)
    products = _make_products(cfg, rng)
    steps.update()
    queries = _make_queries(cfg, products, rng)
    steps.update()
    cand = _make_candidates(cfg, products, queries, rng, progress)
    steps.update()
    cand = _rank_candidates(cand, products, queries, rng)
    truth = cand[["query_id", "product_id", "grade"]]
    judgments = _noisy_judgments(truth, queries, cfg, rng)
    steps.update()
    imps = _simulate_logs(cand, products, queries, cfg, rng, progress)
    steps.update()
    report = engagement_report(imps, truth, min_impressions=cfg.min_impressions)
    _write_tables(out, products, queries, cand, truth, judgments, imps)
    steps.update()
    steps.close()
    meta = _metadata(seed, cfg, products, queries, cand, truth, judgments, imps, report)
    write_metadata(out, meta)
    return dict(meta, out_dir=str(out), seconds=round(time.perf_counter() - t0, 2))


__all__ = ["GENERATOR_VERSION", "WorldConfig", "generate_world"]
