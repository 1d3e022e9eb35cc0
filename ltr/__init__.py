"""ltr: training, tuning, tracking and serving for LLM-labelled learning to rank."""
import os

# OpenMP threads (XGBoost's, torch's) that spin at every barrier waste a core while a sibling is descheduled:
# beside one other busy process an XGBoost fit took 27.2 s spinning and 20.3 s sleeping (13.3 s vs 13.4 s on
# an idle machine; README, "Beyond one machine: Dask"). Set before either library loads; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
