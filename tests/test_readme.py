"""The README's Python examples run as written (the ones that train are sized to be quick)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_mtl.tasks import TASK_REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = dict(TASK_REGISTRY)
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    finally:
        TASK_REGISTRY.clear()
        TASK_REGISTRY.update(saved)
