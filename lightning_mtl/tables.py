"""The one Markdown table writer and the one CSV writer of the reports (plain Python)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: separator cell per alignment code: `-` unaligned, `l` left, `c` centred, `r` right
_RULES = {"-": "---", "l": ":---", "c": ":---:", "r": "---:"}


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None
) -> str:
    """A pipe table, one line per row, no trailing newline.

    `align` has one code per column (`-` unaligned, `l` left, `c` centred, `r` right); None
    leaves every column unaligned. Cells are written as given; every row has one per column.
    """
    align = "-" * len(header) if align is None else align
    if len(align) != len(header) or set(align) - set(_RULES):
        raise ValueError(
            f"align needs one of {''.join(_RULES)} per column ({len(header)}), got {align!r}"
        )
    lines = [_line(header), "|" + "".join(_RULES[code] + "|" for code in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append(_line(row))
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """`rows` as CSV, one column per key in order of first appearance (missing cells empty)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
