"""Features: cross-encoder, bi-encoder, lexical, engagement and product features; Feast glue."""
import ltr.data  # noqa: F401 - the floor sets the OpenMP wait policy before torch or xgboost loads
