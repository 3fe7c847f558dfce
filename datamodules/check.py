"""`lightning-mtl data check`: scan a dataset root and report every problem in it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console


def check(data: Literal["nyuv2", "celebamask"], root: str, format: str = "auto") -> list[str]:
    """Scan every sample of every split of a dataset root; return its problems.

    Args:
        data: the dataset.
        root: the dataset root folder.
        format: nyuv2 only: auto, mtan, nyud_mt or png.
    """
    if data == "nyuv2":
        from datamodules.nyuv2 import check_nyuv2

        return check_nyuv2(root, format=format)
    from datamodules.celebamask import check_celebamask

    return check_celebamask(root)


def notes(data: Literal["nyuv2", "celebamask"], root: str, format: str = "auto") -> list[str]:
    """What to know about how a root is read that is not a problem (e.g. an NYUD-MT root
    without a test list is evaluated on val); a root that cannot be read has none."""
    if data != "nyuv2":
        return []
    from datamodules.nyuv2 import resolve

    try:
        return resolve(root, format).notes
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
    """Exit status 0 when the root is fine, 1 when problems were found (each one printed)."""
    options = parser().parse_args(argv).check
    problems = check(options.data, options.root, options.format)
    console = Console()
    for note in notes(options.data, options.root, options.format):
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True, highlight=False)
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}", soft_wrap=True, highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {options.root}", soft_wrap=True)
        return 1
    console.print(f"{options.root}: no problems found ({options.data})", soft_wrap=True)
    return 0
