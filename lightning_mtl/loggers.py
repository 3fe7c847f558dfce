"""ResumableCSVLogger: a CSVLogger that keeps the run's metrics.csv when the run resumes."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing `metrics.csv` when it starts, so a run resumed
    from its checkpoint would lose every epoch it logged before the crash. This one appends to
    it (under its header, widened when new keys appear). Steps logged after the checkpoint and
    before the crash are logged again by the resumed run: readers take the last row per step
    or epoch (the report does)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])
