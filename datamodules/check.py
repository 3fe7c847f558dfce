"""`lightning-mtl data check`: scan a dataset root and report every problem in it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console


def _check(data: str, root: str, format: str) -> list[str]:
    if data == "nyuv2":
        from datamodules.nyuv2 import check_nyuv2

        return check_nyuv2(root, format=format)
    from datamodules.celebamask import check_celebamask

    return check_celebamask(root)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when the root is fine, 1 when problems were found (each one printed)."""
    parser = argparse.ArgumentParser(
        prog="lightning-mtl data", description="Check a dataset root before training on it."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="scan every sample of every split")
    check.add_argument("--data", required=True, choices=["nyuv2", "celebamask"])
    check.add_argument("--root", required=True)
    check.add_argument(
        "--format", default="auto", help="nyuv2 only: auto, mtan, nyud_mt or png (default auto)"
    )
    args = parser.parse_args(argv)
    problems = _check(args.data, args.root, args.format)
    console = Console()
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}", soft_wrap=True, highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {args.root}", soft_wrap=True)
        return 1
    console.print(f"{args.root}: no problems found ({args.data})", soft_wrap=True)
    return 0
