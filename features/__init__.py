"""Features: cross-encoder, bi-encoder, lexical, engagement and product features; Feast glue."""
import ltr  # noqa: F401 - its import sets the OpenMP wait policy before torch or xgboost loads
