"""LLM labeler: prompts, backends, cache, cascade, polarization, calibration."""
import ltr  # noqa: F401 - its import sets the OpenMP wait policy before torch or xgboost loads
