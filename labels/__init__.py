"""LLM labeler: prompts, backends, cache, cascade, polarization, calibration."""
