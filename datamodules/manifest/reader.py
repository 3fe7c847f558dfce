"""A manifest root: `manifest.csv` parsed strictly into rows, a row's files read, a whole scan.

```
root/manifest.csv   header `split,image,<target columns…>`; one row per sample
root/targets.yaml   the kind of each target column (`columns`), unless given to the datamodule
```

`split` is train, val or test; `image` and the dense targets' cells are file paths relative to
the root (png, jpg, tif, npy, npz), an image-level label's cell is a number. Every problem names
the manifest line and column (and the file, when a file is at fault) and what was expected;
`open_manifest` returns the problems of the table so that `check_manifest` can list them all.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..base import Arrays
from ..decoding import label_edges
from .columns import IMAGE, Column, DerivedEdges, FileColumn, ManifestError, parse_columns

MANIFEST = "manifest.csv"
DECLARATIONS = "targets.yaml"
SPLITS = ("train", "val", "test")
LAYOUT = (
    f"{MANIFEST} (header split,image,<one column per target>; split = train|val|test; cells: "
    f"file paths relative to the root, or a number for an image-level label) and {DECLARATIONS} "
    "(each target column's kind and storage, or the datamodule's `columns`)"
)


@dataclass(frozen=True)
class Row:
    """One sample: its manifest line, its split and the parsed cells (file paths and labels)."""

    line: int
    split: str
    cells: dict[str, Any]


def read_columns(root: Path, declarations: Mapping[str, Any] | None = None) -> dict[str, Column]:
    """The target columns of a manifest root: `declarations` if given, else its targets.yaml."""
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root / MANIFEST} not found: a manifest root holds {LAYOUT}")
    if declarations is not None:
        return parse_columns(declarations, "the datamodule's columns")
    path = root / DECLARATIONS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: declare the kind of each target column of {root / MANIFEST} "
            "there (or in the datamodule's `columns`)"
        )
    try:
        declared = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: cannot read it ({e})") from e
    return parse_columns(declared, str(path))


@dataclass(frozen=True)
class ManifestReader:
    """Reads the rows of the manifest `path` by `columns` (`image` first); every failure is a
    `ManifestError` naming the line, the column and the file."""

    path: Path
    columns: dict[str, Column]

    def where(self, row: Row, key: str) -> str:
        return f"{self.path} line {row.line}, column {key!r}"

    def load(self, row: Row, key: str) -> np.ndarray:
        """One stored column of a row in the array layout of its kind."""
        column, cell = self.columns[key], row.cells[key]
        if not isinstance(column, FileColumn):
            return cell  # a label, parsed with the table
        try:
            return column.load(cell)
        except FileNotFoundError as e:
            raise ManifestError(
                f"{self.where(row, key)}: {cell}: missing file; expected {column.expected}"
            ) from e
        except Exception as e:  # decoders and PIL/numpy raise many types on bad files
            raise ManifestError(
                f"{self.where(row, key)}: {cell}: {e}; expected {column.expected}"
            ) from e

    def check_sizes(self, row: Row, arrays: Arrays) -> None:
        """Every dense array must match the image's height and width."""
        size = arrays["image"].shape[:2]
        for key, value in arrays.items():
            if np.ndim(value) >= 2 and value.shape[:2] != size:
                raise ManifestError(
                    f"{self.where(row, key)}: {row.cells[key]}: size {value.shape[:2]}, expected "
                    f"the image's {size} ({row.cells['image']})"
                )

    def read(self, row: Row, keys: Sequence[str]) -> Arrays:
        """`image` plus `keys` of a row in the array layout (derived edges from their labels)."""
        derived = {k: c for k in keys if isinstance(c := self.columns[k], DerivedEdges)}
        stored = ["image", *(k for k in keys if k not in derived)]
        stored += [c.source for c in derived.values()]
        arrays = {k: self.load(row, k) for k in dict.fromkeys(stored)}
        self.check_sizes(row, arrays)
        arrays.update({k: label_edges(arrays[c.source]) for k, c in derived.items()})
        return {k: arrays[k] for k in ("image", *keys)}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: its reader, its rows in file order, the columns it does not read."""

    reader: ManifestReader
    rows: list[Row]
    undeclared: list[str]

    @property
    def notes(self) -> list[str]:
        """What to know about how the manifest is read, not problems."""
        if not self.undeclared:
            return []
        return [f"{self.reader.path}: columns {self.undeclared} are not declared and not read"]


def open_manifest(root: Path, columns: Mapping[str, Column]) -> tuple[Manifest, list[str]]:
    """`root/manifest.csv` parsed with the target `columns`, and every problem of the table
    (the files are not read). A header without `split`, `image` or a declared column gives no
    rows."""
    path = root / MANIFEST
    columns = {"image": IMAGE, **columns}
    stored = [k for k, c in columns.items() if not isinstance(c, DerivedEdges)]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            table = csv.reader(f)  # `line_num`: the line a record ends on (cells may span lines)
            records = [(table.line_num, record) for record in table]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read it as CSV ({e})") from e
    header = [name.strip() for name in records[0][1]] if records else []
    reader = ManifestReader(path, columns)
    problems = _header_problems(path, header, stored)
    if problems:
        return Manifest(reader, [], []), problems
    undeclared = [name for name in header if name not in ("split", *columns)]
    index = {name: header.index(name) for name in ("split", *stored)}
    rows = []
    for number, record in records[1:]:
        if not record:
            continue
        if len(record) != len(header):
            problems.append(
                f"{path} line {number}: {len(record)} fields, expected {len(header)} (the header's)"
            )
            continue
        split = record[index["split"]].strip()
        if split not in SPLITS:
            problems.append(
                f"{path} line {number}, column 'split': {split!r}; expected one of {list(SPLITS)}"
            )
            continue
        cells, bad = {}, []
        for key in stored:
            try:
                cells[key] = columns[key].parse(record[index[key]].strip(), root)
            except ValueError as e:
                bad.append(
                    f"{path} line {number}, column {key!r}: {e}; expected {columns[key].expected}"
                )
        problems += bad
        if not bad:
            rows.append(Row(number, split, cells))
    if not problems and not any(row.split == "train" for row in rows):
        problems.append(f"{path}: no train rows; the val and test splits are carved from train")
    return Manifest(reader, rows, undeclared), problems


def _header_problems(path: Path, header: list[str], stored: list[str]) -> list[str]:
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        return [f"{path} line 1: columns {twice} appear more than once"]
    missing = [k for k in ("split", *stored) if k not in header]
    if not missing:
        return []
    required = [k for k in missing if k in ("split", "image")]
    declared = [k for k in missing if k not in required]
    what = [f"{k} (required)" for k in required] + [f"{k} (declared)" for k in declared]
    return [
        f"{path} line 1: no column {', '.join(what)}; its columns are {header}; a manifest "
        f"root holds {LAYOUT}"
    ]


def check_manifest(root: str | Path, columns: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of a manifest root (empty = fine): the declarations, the table, and every
    file of every row read in full; an image listed in two splits."""
    root = Path(root)
    try:
        manifest, problems = open_manifest(root, read_columns(root, columns))
    except (OSError, ValueError) as e:
        return [str(e)]
    reader, owner = manifest.reader, {}
    files = [k for k, c in reader.columns.items() if isinstance(c, FileColumn)]
    for row in manifest.rows:
        image = row.cells["image"]
        if owner.setdefault(image, row.split) != row.split:
            problems.append(
                f"{reader.where(row, 'image')}: {image} is listed in both {owner[image]!r} and "
                f"{row.split!r}"
            )
        arrays = {}
        for key in files:
            try:
                arrays[key] = reader.load(row, key)
            except ManifestError as e:
                problems.append(str(e))
        if "image" in arrays:
            try:
                reader.check_sizes(row, arrays)
            except ManifestError as e:
                problems.append(str(e))
    return problems
