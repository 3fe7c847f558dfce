"""Kept for the tests that still import the W&B readers from here (test_cli, test_sweep_report);
they are in tests/helpers.py."""

from tests.helpers import history_keys, records, run_config

__all__ = ["history_keys", "records", "run_config"]
