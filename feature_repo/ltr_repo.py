"""Feast definitions of the LTR feature platform: entities, parquet sources, views, services.

The definitions are fixed; the data is per run. `definitions(data_dir, ...)` builds every object
pointing its FileSources at DATA_DIR/<view>.parquet (what `features.build.build_features` writes);
`features.store` renders a feature_store.yaml for the run and applies these objects. For the plain
Feast CLI (`cd feature_repo && feast apply`), the module-level objects below read the data and store
directories from LTR_FEATURE_DATA and LTR_FEATURE_STORE_DIR (see feature_store.yaml).

Views (all Float64 features, NaN when unknown):
  lexical (query, product)       BM25 per field, coverage, brand/color/type/number matches
  content (query, product)       ce_score (cross-encoder), bienc_cos (bi-encoder cosine)
  product_features (product)     price, rating, popularity, text lengths, category depth
  engagement_qp (query, product) windowed counts, smoothed rates, position-debiased CTR
  engagement_product (product)   the same per product
  relevance_labels (LabelView)   label_score, label_grade, labeler (human / llm:... / engagement)
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import (
    ConflictPolicy,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    LabelView,
)
from feast.types import Float64, String
from feast.value_type import ValueType

# Feature names are declared once, in features/names.py (builders, serving and model configs read them too).
from features.names import (  # noqa: E402,F401  (re-exported: store and CLI users read them from the repo)
    ENGAGEMENT_METRICS,
    LABEL_FIELDS,
    LABEL_VIEW,
    VIEW_KEYS,
    engagement_feature_names,
    view_features,
)

QUERY = Entity(name="query", join_keys=["query_id"], value_type=ValueType.STRING,
               description="A search query; id = stable hash of its normalized text")
PRODUCT = Entity(name="product", join_keys=["product_id"], value_type=ValueType.STRING,
                 description="A catalog product")
_ENTITIES = {"query_id": QUERY, "product_id": PRODUCT}


def _source(data_dir: Path, view: str) -> FileSource:
    return FileSource(name=f"{view}_source", path=str(Path(data_dir) / f"{view}.parquet"),
                      timestamp_field="event_timestamp")


def definitions(data_dir: str | Path, windows: list[int] = (7, 28), views: list[str] | None = None,
                labeler_priority: list[str] = ("human", "llm", "grader", "engagement")) -> dict[str, Any]:
    """All Feast objects for a run whose parquet sources live in `data_dir`.

    `views` restricts the feature views (e.g. when a run has no engagement log); the services
    `training` (features + labels) and `serving` (features only) then cover exactly those.
    """
    data_dir = Path(data_dir)
    feats = view_features(windows)
    names = list(feats) if views is None else [v for v in feats if v in views]
    objs: dict[str, Any] = {"entity_query": QUERY, "entity_product": PRODUCT}
    fvs = []
    for v in names:
        fv = FeatureView(
            name=v, entities=[_ENTITIES[k] for k in VIEW_KEYS[v]], ttl=timedelta(0),
            schema=[Field(name=f, dtype=Float64) for f in feats[v]], source=_source(data_dir, v), online=True,
            tags={"family": v.split("_")[0]},
        )
        objs[v] = fv
        fvs.append(fv)
    labels = LabelView(
        name=LABEL_VIEW, entities=[QUERY, PRODUCT], source=_source(data_dir, LABEL_VIEW), ttl=timedelta(0),
        schema=[Field(name="query_id", dtype=String), Field(name="product_id", dtype=String),
                Field(name="label_score", dtype=Float64), Field(name="label_grade", dtype=Float64),
                Field(name="labeler", dtype=String), Field(name="labeler_kind", dtype=String)],
        labeler_field="labeler_kind", conflict_policy=ConflictPolicy.LABELER_PRIORITY,
        online=False, description="Relevance labels: human judgments, LLM grades, engagement labels",
        tags={"ltr.labeler_priority": ",".join(labeler_priority)},
    )
    objs[LABEL_VIEW] = labels
    objs["training"] = FeatureService(name="training", features=fvs + [labels],
                                      description="features and labels for point-in-time training sets")
    objs["serving"] = FeatureService(name="serving", features=fvs, description="features read online at rank time")
    return objs


# --- module-level objects for the plain Feast CLI ---------------------------------------------------
_DATA = os.environ.get("LTR_FEATURE_DATA", str(Path(__file__).resolve().parent / "data"))
_OBJECTS = definitions(_DATA)
globals().update({f"fs_{k}": v for k, v in _OBJECTS.items()})
