"""Features: cross-encoder, bi-encoder, lexical, engagement and product features; Feast glue."""
