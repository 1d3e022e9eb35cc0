"""ltr: training, tuning, tracking and serving for LLM-labelled learning to rank."""
import ltr.data  # noqa: F401 - the floor sets the OpenMP wait policy before torch or xgboost loads

__version__ = "0.1.0"
