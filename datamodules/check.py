"""`lightning-mtl data check`: scan a dataset root and report every problem in it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

Dataset = Literal["nyuv2", "celebamask", "manifest"]
Columns = dict[str, str | dict[str, Any]] | None


def check(data: Dataset, root: str, format: str = "auto", columns: Columns = None) -> list[str]:
    """Scan every sample of every split of a dataset root; return its problems.

    Args:
        data: the dataset (`manifest`: a root with manifest.csv and targets.yaml).
        root: the dataset root folder.
        format: nyuv2 only: auto, mtan, nyud_mt or png.
        columns: manifest only: the target columns' declarations, for a root without
            targets.yaml (as the datamodule's `columns`).
    """
    if data == "nyuv2":
        from datamodules.nyuv2 import check_nyuv2

        return check_nyuv2(root, format=format)
    if data == "manifest":
        from datamodules.manifest import check_manifest

        return check_manifest(root, columns)
    from datamodules.celebamask import check_celebamask

    return check_celebamask(root)


def notes(data: Dataset, root: str, format: str = "auto", columns: Columns = None) -> list[str]:
    """What to know about how a root is read that is not a problem (e.g. an NYUD-MT root
    without a test list is evaluated on val, a manifest's undeclared columns are not read); a
    root that cannot be read has none."""
    try:
        if data == "nyuv2":
            from datamodules.nyuv2 import resolve

            return resolve(root, format).notes
        if data == "manifest":
            from datamodules.manifest import open_manifest, read_columns

            return open_manifest(Path(root), read_columns(Path(root), columns))[0].notes
    except (OSError, ValueError):  # `check` reports why
        return []
    return []  # CelebAMask-HQ roots have none


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
    """Exit status 0 when the root is fine, 1 when problems were found (each one printed)."""
    options = parser().parse_args(argv).check
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
