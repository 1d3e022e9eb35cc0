"""LLM labeler: prompts, backends, cache, cascade, polarization, calibration."""
import ltr.data  # noqa: F401 - the floor sets the OpenMP wait policy before torch or xgboost loads
