"""The two-tower loss: in-batch negatives (MultipleNegativesRanking) plus one mined hard negative per anchor.

Why this loss: retrieval scores a query against the whole catalog, so the model must rank the query's
positive above every other product, not only calibrate one pair; a softmax over the batch's documents
does that at the price of one embedding per document. In-batch documents of other queries are easy
negatives (what zero-shot already gets right); the mined hard negative of the same query (graded
Irrelevant although a retriever ranked it high) is where the teaching is.

Why the mask: several anchors of one query can share a batch (a query has many Exact products), and one
product can be the positive of two queries; such a column is not a negative for the row, so it is left
out of the softmax instead of being pushed down.
"""
from __future__ import annotations

import torch


def negative_mask(anchor_query: torch.Tensor, doc_query: torch.Tensor, anchor_product: torch.Tensor,
                  doc_product: torch.Tensor, doc_is_positive: torch.Tensor, doc_valid: torch.Tensor) -> torch.Tensor:
    """(B, D) bool, True where column j may not act as row i's negative: another positive of row i's query,
    the same product as row i's positive, or an empty slot. The diagonal (row i's own positive) stays."""
    b = anchor_query.shape[0]
    same_q = anchor_query[:, None] == doc_query[None, :]
    same_p = anchor_product[:, None] == doc_product[None, :]
    bad = (same_q & doc_is_positive[None, :]) | same_p | ~doc_valid[None, :]
    own = torch.zeros_like(bad)
    own[torch.arange(b), torch.arange(b)] = True
    return bad & ~own


def in_batch_loss(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, scale: float,
                  mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each anchor's positive against every other document of the batch.

    q, pos: (B, d) unit-norm embeddings of the anchors' queries and positives; neg: (B, d) hard negatives
    or None; mask: `negative_mask` over the documents [pos; neg] (B x B or B x 2B)."""
    docs = pos if neg is None else torch.cat([pos, neg], dim=0)
    logits = scale * (q @ docs.T)
    logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(q.shape[0]))


__all__ = ["in_batch_loss", "negative_mask"]
