"""`write_root_once`: write a (synthetic) dataset root once, atomically.

Used by the `synthesize=N` option of the on-disk datamodules (`NYUv2DataModule`,
`CelebAMaskHQDataModule`) from `prepare_data`, which Lightning runs on one process per node
and follows with a barrier before `setup`: the other ranks see the finished root only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def partial_path(root: Path) -> Path:
    """The temporary folder beside `root` that this process writes into (hidden, per process:
    no reader ever takes it for `root`, and concurrent writers do not share one)."""
    return root.with_name(f".{root.name}.partial-{os.getpid()}")


def write_root_once(
    root: str | Path,
    write: Callable[[Path], object],
    check: Callable[[Path], object] | None = None,
) -> bool:
    """Make `root` by `write(folder)` unless it exists; True when this call wrote it.

    `write` fills a temporary folder beside `root` (`partial_path`), `check` (raising on a bad
    root) then looks at the written folder, and only then is it renamed to `root`. A writer or
    check that raises leaves neither `root` nor the temporary folder behind; a process killed
    mid-write leaves only its hidden temporary folder, which nothing reads. When another process
    renamed its copy into place first, that copy is kept and this one removed.
    """
    root = Path(root)
    if root.exists():
        return False
    partial = partial_path(root)
    shutil.rmtree(partial, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(partial)
        if check is not None:
            check(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(root)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not root.exists():  # else another process wrote it first
            raise
        return False
    return True
