"""The floor: table schemas, dataset directories, the built-in world, the ESCI loader, the click model.

Imports neither labels/ nor features/.
"""
from .dataset import Dataset, DatasetError, read_table, write_table  # noqa: F401
from .schemas import SCHEMAS, SchemaError, normalize_query, product_text_hash, query_id  # noqa: F401
