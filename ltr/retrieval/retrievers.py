"""The first-stage retrievers over the whole catalog (BM25, bi-encoder) and the champion as re-ranker.

BM25 (bm25s) indexes one plain text per product (title, brand, color, category, bullets, description)
with the lexical features' tokenizer plus plural folding, so "bottles" finds "bottle". The bi-encoder
embeds every product once and takes an exact top-k of the query-by-catalog matrix product, in query
chunks that keep the score matrix under ~256 MB; it embeds the same texts with the same encoder as the
`bienc_cos` feature (`features.biencoder.default_biencoder`) through the machine's embedding cache
(`ltr.data.embedding_cache`), so a killed retrieval resumes from the stored chunks and the main job's
feature stage finds every product embedding already there. Exact search is the right tool up to a few
million products on CPU: see docs/retrieval.md for when an ANN index (faiss, hnswlib) is needed.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from features.lexical import content_terms, tokenize
from ltr.data.plurals import fold_plural
from ltr.data.product_text import TEXT_FIELDS, TextLayout, render

from .config import RetrievalConfig

#: BM25's view of a product: the encoder's fields and budgets, plain words (no "Brand:" labels)
BM25_LAYOUT = TextLayout(fields=TEXT_FIELDS, sep=" ", max_chars={"bullet_points": 300, "description": 200})
_SCORE_BYTES = 256 * 2**20


def terms(text: object) -> list[str]:
    """BM25 terms: lexical tokens without stopwords, plurals folded."""
    return [fold_plural(t) for t in content_terms(tokenize(text))]


def top_k(scores: np.ndarray, k: int, positive_only: bool = False) -> np.ndarray:
    """Indices of the k best scores, best first; ties by lower index (deterministic)."""
    cand = np.flatnonzero(scores > 0) if positive_only else np.arange(len(scores))
    if len(cand) > k:
        part = np.argpartition(-scores[cand], k - 1)[:k]
        kth = scores[cand[part]].min()
        cand = cand[scores[cand] >= kth]  # keep every tie at the k-th score, then cut by index
    order = np.lexsort((cand, -scores[cand]))
    return cand[order][:k]


class BM25Retriever:
    """bm25s over the whole catalog; `scores(query)` is the full score vector (0 = no shared term)."""

    def __init__(self, products: pd.DataFrame) -> None:
        import bm25s
        docs = [terms(render(row, BM25_LAYOUT)) for row in products.to_dict("records")]
        self.bm25 = bm25s.BM25()
        self.bm25.index([d if d else [""] for d in docs], show_progress=False)
        self.vocab = set(self.bm25.vocab_dict)
        self.n = len(docs)

    def scores(self, query: str) -> np.ndarray:
        q = [t for t in terms(query) if t in self.vocab and t]
        if not q:
            return np.zeros(self.n, dtype=np.float64)
        return np.asarray(self.bm25.get_scores(q), dtype=np.float64)


class BiEncoderRetriever:
    """Unit-norm product embeddings (n, d) held in memory; cosine = matrix product with query embeddings."""

    def __init__(self, products: pd.DataFrame, cfg: RetrievalConfig, progress: bool = False) -> None:
        from features.biencoder import FEATURE_MAX_LENGTH, BiEncoder, default_biencoder
        from features.text import product_texts
        from ltr.data.embedding_cache import default_cache_dir
        use_default = cfg.bienc_path is None and cfg.bienc_max_length == FEATURE_MAX_LENGTH
        self.encoder = default_biencoder() if use_default else BiEncoder(cfg.bienc_path, cfg.bienc_max_length)
        cache = default_cache_dir()  # the machine's embedding cache: resumable, shared with the feature stage
        if cache is not None:
            self.encoder = self.encoder.cached(cache)
        self.batch_size = cfg.batch_size
        self.emb = self.encoder.encode(product_texts(products), cfg.batch_size, progress).astype(np.float32)

    def chunks(self, queries: list[str]) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, cosine matrix of a chunk of queries by the whole catalog)."""
        q = self.encoder.encode(queries, self.batch_size).astype(np.float32)
        step = max(1, _SCORE_BYTES // (4 * max(1, len(self.emb))))
        for s in range(0, len(q), step):
            yield s, q[s:s + step] @ self.emb.T


def first_stage(products: pd.DataFrame, queries: pd.DataFrame, cfg: RetrievalConfig,
                progress: bool = False) -> pd.DataFrame:
    """Union of BM25's and the bi-encoder's top-k per query, with both ranks (NaN: not in that top-k)
    and both scores (defined for every union row)."""
    from tqdm.auto import tqdm
    k = min(cfg.k, len(products))
    bm25 = BM25Retriever(products)
    bienc = BiEncoderRetriever(products, cfg, progress)
    qids, texts = queries["query_id"].to_numpy(), queries["query"].tolist()
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("q", "p", "rank_bm25", "rank_bienc", "score_bm25",
                                                          "score_bienc")}
    rb, re_ = np.full(len(products), np.nan), np.full(len(products), np.nan)
    bar = tqdm(total=len(qids), disable=not progress, desc="retrieve", unit="query")
    for off, cos in bienc.chunks(texts):
        for j in range(len(cos)):
            bm = bm25.scores(texts[off + j])
            tb, te = top_k(bm, k, positive_only=True), top_k(cos[j], k)
            union = np.union1d(tb, te)
            rb[tb], re_[te] = np.arange(1, len(tb) + 1), np.arange(1, len(te) + 1)
            for c, v in (("q", np.full(len(union), off + j)), ("p", union), ("rank_bm25", rb[union]),
                         ("rank_bienc", re_[union]), ("score_bm25", bm[union]), ("score_bienc", cos[j][union])):
                cols[c].append(v)
            rb[tb], re_[te] = np.nan, np.nan
            bar.update(1)
    bar.close()
    cat = {c: np.concatenate(v) for c, v in cols.items()}
    return pd.DataFrame({"query_id": qids[cat.pop("q")], "product_id": products["product_id"].to_numpy()[cat.pop("p")],
                         **{c: v.astype(np.float64) for c, v in cat.items()}})


def load_champion(model_uri: str, tracking_uri: str | None = None):
    """The registered model with its parts (`ltr.serving.model.load_ranker`), checked before any retrieval
    work so a wrong URI or store fails in a second, not after the catalog is embedded."""
    from ltr.serving.model import check_bi_encoder, load_ranker
    lm = load_ranker(model_uri, tracking_uri=tracking_uri)
    check_bi_encoder(lm, "default")
    return lm


def champion_ranks(union: pd.DataFrame, products: pd.DataFrame, queries: pd.DataFrame, lm,
                   progress: bool = False) -> pd.DataFrame:
    """The registered model's score of every union row and its 1-based rank within the query's union.

    Features as `ltr evaluate` computes them for pairs it never saw (features/ondemand.py: lexical,
    product, bi-encoder, the model's own cross-encoder); engagement features are absent (NaN)."""
    from features.ondemand import OnDemandFeatures
    from ltr.serving.assemble import FeatureAssembler
    od = OnDemandFeatures(products, cross_encoder=lm.cross_encoder, bi_encoder="default")
    qtext = queries.set_index("query_id")["query"]
    pairs = pd.DataFrame({"query": qtext.reindex(union["query_id"]).to_numpy(),
                          "product_id": union["product_id"].to_numpy()})
    X = FeatureAssembler(lm.features, od, None, on_missing="nan").frame_pairs(pairs, progress=progress)
    out = union.assign(score_champion=np.asarray(lm.ranker.predict(X, missing="nan"), dtype=np.float64))
    order = out.sort_values(["query_id", "score_champion", "product_id"], ascending=[True, False, True])
    out.loc[order.index, "rank_champion"] = order.groupby("query_id", sort=False).cumcount().to_numpy() + 1.0
    return out


def _check_inputs(products: pd.DataFrame, queries: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalog (every optional column present) and the distinct queries, or a one-line error."""
    from ltr.data.dataset import complete_products
    from ltr.data.schemas import PRODUCTS, QUERIES

    from .config import RetrievalError
    for name, df, need in (("products", products, PRODUCTS.required), ("queries", queries, QUERIES.required)):
        if not isinstance(df, pd.DataFrame):
            raise RetrievalError(f"{name} must be a DataFrame, got {type(df).__name__}.")
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise RetrievalError(f"{name} table: missing required column(s) {missing}. Fix: pass a {name} table "
                                 f"with columns {list(need)}.")
        if df.empty:
            raise RetrievalError(f"{name} has no rows. Fix: pass a non-empty {name} table.")
    prods = complete_products(products, where="retrieval catalog")  # also refuses duplicate product ids
    qs = QUERIES.validate(queries[[c for c in ("query_id", "query") if c in queries.columns]]
                          .drop_duplicates("query_id"), where="retrieval queries")
    return prods.reset_index(drop=True), qs.sort_values("query_id").reset_index(drop=True)


def retrieve(products: pd.DataFrame, queries: pd.DataFrame, cfg: RetrievalConfig | None = None, *,
             tracking_uri: str | None = None, progress: bool = False) -> pd.DataFrame:
    """Rank metadata of the union of BM25's and the bi-encoder's top-k (and the champion's re-ranking);
    the columns are documented in `ltr.retrieval`."""
    cfg = cfg or RetrievalConfig()
    prods, qs = _check_inputs(products, queries)
    champion = load_champion(cfg.champion, tracking_uri) if cfg.champion else None
    out = first_stage(prods, qs, cfg, progress)
    if champion is not None:
        out = champion_ranks(out, prods, qs, champion, progress)
    ranks = [c for c in ("rank_bm25", "rank_bienc", "rank_champion") if c in out.columns]
    scores = [c for c in ("score_bm25", "score_bienc", "score_champion") if c in out.columns]
    best = out[ranks].min(axis=1)
    out = out.assign(_best=best).sort_values(["query_id", "_best", "product_id"], kind="stable")
    return out[["query_id", "product_id", *ranks, *scores]].reset_index(drop=True)
