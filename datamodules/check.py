"""`lightning-mtl data check`: scan a dataset root and report every problem in it.

Each dataset is read by the `DatasetChecker` registered under its name in `DATASET_CHECKERS`
(nyuv2, celebamask, manifest); another dataset joins with `DATASET_CHECKERS.register(name,
DatasetChecker(problems, notes))`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from datamodules.celebamask import check_celebamask
from datamodules.manifest import check_manifest, open_manifest, read_columns
from datamodules.nyuv2 import check_nyuv2, resolve
from lightning_mtl.registry import Registry

Columns = dict[str, str | dict[str, Any]] | None
#: what a checker reports on a root, from the command line's (root, format, columns)
RootReport = Callable[[str, str, Columns], list[str]]


def _no_notes(root: str, format: str, columns: Columns) -> list[str]:
    return []


@dataclass(frozen=True)
class DatasetChecker:
    """How `data check` reads the roots of one dataset.

    Attributes:
        problems: every problem of a root (empty = fine), every sample of every split read.
        notes: what to know about how a root is read that is not a problem; may raise `OSError`
            or `ValueError` on a root that cannot be read (`problems` says why).
    """

    problems: RootReport
    notes: RootReport = _no_notes


def _nyuv2_problems(root: str, format: str, columns: Columns) -> list[str]:
    return check_nyuv2(root, format=format)


def _nyuv2_notes(root: str, format: str, columns: Columns) -> list[str]:
    return resolve(root, format).notes


def _celebamask_problems(root: str, format: str, columns: Columns) -> list[str]:
    return check_celebamask(root)


def _manifest_problems(root: str, format: str, columns: Columns) -> list[str]:
    return check_manifest(root, columns)


def _manifest_notes(root: str, format: str, columns: Columns) -> list[str]:
    return open_manifest(Path(root), read_columns(Path(root), columns))[0].notes


#: dataset name → its checker: what `data check --data NAME` runs
DATASET_CHECKERS: Registry[DatasetChecker] = Registry("dataset")
DATASET_CHECKERS.register("nyuv2", DatasetChecker(_nyuv2_problems, _nyuv2_notes))
DATASET_CHECKERS.register("celebamask", DatasetChecker(_celebamask_problems))
DATASET_CHECKERS.register("manifest", DatasetChecker(_manifest_problems, _manifest_notes))


def check(data: str, root: str, format: str = "auto", columns: Columns = None) -> list[str]:
    """Scan every sample of every split of a dataset root; return its problems.

    Args:
        data: the dataset, by registered name: nyuv2, celebamask or manifest (a root with
            manifest.csv and targets.yaml).
        root: the dataset root folder.
        format: nyuv2 only: auto, mtan, nyud_mt or png.
        columns: manifest only: the target columns' declarations, for a root without
            targets.yaml (as the datamodule's `columns`).
    """
    return DATASET_CHECKERS.get(data).problems(root, format, columns)


def notes(data: str, root: str, format: str = "auto", columns: Columns = None) -> list[str]:
    """What to know about how a root is read that is not a problem (e.g. an NYUD-MT root
    without a test list is evaluated on val, a manifest's undeclared columns are not read); a
    root that cannot be read has none."""
    try:
        return DATASET_CHECKERS.get(data).notes(root, format, columns)
    except (OSError, ValueError):  # `check` reports why
        return []


def parser(prog: str = "lightning-mtl data") -> ArgumentParser:
    """The `data` command line: subcommand `check` with the options of `check`."""
    parser = ArgumentParser(prog=prog, description="Check a dataset root before training on it.")
    commands = parser.add_subcommands(dest="command")
    check_parser = ArgumentParser(description="Scan every sample of every split of a dataset root.")
    check_parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML of these options (--print_config)"
    )
    check_parser.add_function_arguments(check, as_group=False)
    commands.add_subcommand("check", check_parser, help="scan every sample of every split")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when the root is fine, 1 when problems were found (each one printed); an
    unknown dataset is a usage error listing the registered ones."""
    command_line = parser()
    options = command_line.parse_args(argv).check
    try:
        DATASET_CHECKERS.get(options.data)
    except ValueError as unknown:
        command_line.error(str(unknown))
    where = (options.data, options.root, options.format, options.columns)
    problems = check(*where)
    console = Console()
    for note in notes(*where):
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True, highlight=False)
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}", soft_wrap=True, highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {options.root}", soft_wrap=True)
        return 1
    console.print(f"{options.root}: no problems found ({options.data})", soft_wrap=True)
    return 0
