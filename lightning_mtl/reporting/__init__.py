"""Reports: run folders → the papers' tables and figures (`lightning-mtl report`)."""

from lightning_mtl.reporting.logs import RunLog, RunLogError, read_run, read_runs
from lightning_mtl.reporting.report import Report, report
from lightning_mtl.reporting.tables import Row, delta_m, table_rows, write_tables

__all__ = [
    "Report",
    "Row",
    "RunLog",
    "RunLogError",
    "delta_m",
    "read_run",
    "read_runs",
    "report",
    "table_rows",
    "write_tables",
]
