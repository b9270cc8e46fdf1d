"""The Parquet results store: one folder per sweep, one file per finished run (see results.store, results.schema).

>>> import results
>>> df = results.load("sweeps/digits")               # doctest: +SKIP
"""

from results.schema import RUN_SCHEMA, STATUSES, run_table
from results.store import ResultsStore, StoreError, load

__all__ = ["RUN_SCHEMA", "STATUSES", "ResultsStore", "StoreError", "load", "run_table"]
