"""Two-tower retrieval model: the all-MiniLM-L6-v2 bi-encoder fine-tuned on graded mined pairs with a
curriculum (issue 15, Walmart's sponsored-search recipe).

Why it looks like this:
- The same weights and pooling as the zero-shot bi-encoder, so the fine-tuned model drops in wherever that
  one is used: the `bienc_cos` feature (`features.config.FeaturesConfig.bienc_path`), the first-stage
  retriever (`ltr.retrieval.RetrievalConfig.bienc_path`) and serving. It is saved as a bi-encoder dir that
  `features.biencoder.BiEncoder` and sentence-transformers read unchanged.
- Trained on the pairs `ltr.retrieval.mine` sorted into difficulty levels and a labeler graded: in-batch
  negatives plus mined hard negatives, in stages from easy to hard, with query-grouped validation and early
  stopping on NDCG@10; logged to MLflow when a run is active.

One job per module:
- `config.py`: `TwoTowerConfig`, the validated settings (stages, grades that make a positive / negative).
- `curriculum.py`: graded pairs -> triplets (query, positive, hard negative) -> stages, easy to hard.
- `losses.py`: the in-batch-negatives loss and the mask of columns that are not negatives.
- `tower.py`: the shared encoder with a frozen, cached bottom (`BottomCache`, `Tower`).
- `trainer.py`: `fit_two_tower` (validation, early stopping, metadata, MLflow).
- `artifact.py`: the saved dir's format (`META_FILE`), its crash-safe write and `load_two_tower`.
"""
from __future__ import annotations

from .artifact import FORMAT_VERSION, META_FILE, feature_bi_encoder, load_two_tower, read_meta
from .config import DEFAULT_STAGES, TwoTowerConfig
from .tower import BottomCache, Tower, bottom_cache, load_tower
from .trainer import fit_two_tower

__all__ = ["DEFAULT_STAGES", "FORMAT_VERSION", "META_FILE", "BottomCache", "Tower", "TwoTowerConfig",
           "bottom_cache", "feature_bi_encoder", "fit_two_tower", "load_tower", "load_two_tower", "read_meta"]
