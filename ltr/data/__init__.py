"""The floor: table schemas, dataset directories, the built-in world, the ESCI loader, the click model.

Imports neither labels/ nor features/.
"""
import os

# OpenMP threads (XGBoost's, torch's) that spin at every barrier waste a core while a sibling is descheduled:
# beside one other busy process an XGBoost fit took 27.2 s spinning and 20.3 s sleeping (13.3 s vs 13.4 s on
# an idle machine; docs/scale.md). Set here, on the floor every package imports first,
# before either library loads; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .dataset import Dataset, DatasetError, read_table, write_table  # noqa: F401
from .schemas import SCHEMAS, SchemaError, normalize_query, product_text_hash, query_id  # noqa: F401
