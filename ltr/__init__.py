"""ltr: training, tuning, tracking and serving for LLM-labelled learning to rank."""
__version__ = "0.1.0"
