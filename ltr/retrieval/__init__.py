"""Retrieval over the whole catalog and label-free mining of training pairs (issue 15, items 1, 2, 5).

A shop with a catalog and a query log has no candidate lists for most queries, and a label budget should
go where it teaches most. Following Walmart's sponsored-search recipe, several retrievers run over the
whole catalog, their (dis)agreement sorts every retrieved pair into a difficulty level, and a budget of
pairs to label is spread over the levels (hard positives and hard negatives first).

Interface (stable; other code builds on it):

    retrieve(products, queries, cfg: RetrievalConfig | None = None, *, tracking_uri=None,
             progress=False) -> DataFrame
        products: the PRODUCTS table (product_id, title, optional text columns);
        queries: query_id, query.
        One row per (query_id, product_id) in the union of the retrievers' top-k (`cfg.k` each):
          query_id, product_id   str
          rank_bm25              float, 1-based rank of BM25 (bm25s) over the whole catalog; NaN when BM25
                                 did not return the pair within its top k (a product sharing no term with
                                 the query is never returned)
          rank_bienc             float, 1-based rank of the bi-encoder (exact top-k by matrix product over
                                 every catalog embedding); NaN when not within its top k
          rank_champion          float, 1-based rank of the champion's score *within the query's union*
                                 (a re-ranker: every union row has one); column absent without a champion
          score_bm25             BM25 score (0 = no shared term), defined for every row
          score_bienc            cosine of the bi-encoder, defined for every row
          score_champion         the champion's score (only with a champion)
        Rows sorted by query_id, then best rank.

    mine(retrieved, cfg: MiningConfig | None = None) -> DataFrame
        `retrieved` plus a `level` column (str, one of LEVELS), computed from ranks only (no labels).
        A retriever "ranks a pair at the top" when its rank <= cfg.top (default 10). T = the retrievers
        (every rank_* column, the champion included) that rank the pair at the top; R = the first-stage
        retrievers (every rank_* column but rank_champion) that returned it at all:
          easy_positive   every retriever ranks it at the top (all agree)
          hard_positive   only the lexical retriever (BM25) ranks it at the top
          hard_negative   exactly one retriever, not BM25, ranks it at the top (one retriever is fooled)
          medium          some but not all of >= 2 retrievers rank it at the top, or none does and
                          >= 2 first-stage retrievers returned it
          easy_negative   no retriever ranks it at the top and at most one returned it at all
        Extra rank_* columns (e.g. rank_twotower) vote like rank_bienc.

    LEVELS = ("easy_positive", "easy_negative", "medium", "hard_positive", "hard_negative")
        in curriculum order, easiest first; DIFFICULTY maps a level to 1..5.

    allocate_budget(mined, budget: int, weights: dict[str, float] | None = None, seed: int = 0) -> DataFrame
        The rows of `mined` chosen for labelling (all its columns), exactly `budget` of them when the
        positively weighted levels hold that many (else all of them; `.attrs["shortfall"]` says how many
        are missing). Level quotas are proportional to `weights` (default DEFAULT_WEIGHTS: hard_positive
        and hard_negative 0.3 each, medium 0.2, easy_positive and easy_negative 0.1 each); a level with
        fewer pairs than its quota gives the rest to the others; integer quotas by largest remainder.
        Within a level, pairs are drawn round-robin over queries in a seeded order, so every query gets
        some. `.attrs["allocation"]` = {level: count}. Same input and seed -> same rows.

Files (`ltr retrieve`, `ltr mine`, the main job's RUN/retrieval/KEY/ folder), schema
`ltr.data.schemas.RETRIEVED`: retrieved.parquet holds the retrieve() table; mined.parquet the mine() table
plus a bool `selected` column (the budget allocation; `stage.select` makes it). `stage.mine_dataset` writes
both and a dataset directory whose candidates are the selected pairs with their `level`; the labels of
mined pairs carry `level` as provenance (LABELS and CANDIDATES have an optional `level` column).

Modules: config.py (RetrievalConfig, MiningConfig, LEVELS, DEFAULT_WEIGHTS), retrievers.py (BM25, exact
bi-encoder top-k, the champion), mining.py (levels, budget), stage.py (the main job's stage), commands.py
(what the CLI commands do over files).
"""
from .config import DEFAULT_WEIGHTS, DIFFICULTY, LEVELS, MiningConfig, RetrievalConfig, RetrievalError
from .mining import allocate_budget, mine
from .retrievers import retrieve

__all__ = ["DEFAULT_WEIGHTS", "DIFFICULTY", "LEVELS", "MiningConfig", "RetrievalConfig", "RetrievalError",
           "allocate_budget", "mine", "retrieve"]
