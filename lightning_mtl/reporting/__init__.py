"""Reading run folders and turning them into tables and figures (plain Python, no training)."""

from lightning_mtl.reporting.logs import RunLog, RunLogError, read_run, read_runs
from lightning_mtl.reporting.tables import Row, delta_m, table_rows, write_tables

__all__ = [
    "Row",
    "RunLog",
    "RunLogError",
    "delta_m",
    "read_run",
    "read_runs",
    "table_rows",
    "write_tables",
]
