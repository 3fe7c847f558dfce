"""The declaration of a manifest's target columns (`targets.yaml`, or the datamodule's `columns`).

Each target column is declared with a kind of the target-kind table and how its cells are
stored; the declaration becomes a `Column` that parses a cell and decodes the file it names with
the converters of `datamodules.decoding`:

```yaml
seg: {kind: seg, classes: 13, ignore: 0, first: 1}  # stored 0 = unlabelled, 1..13 = classes
depth: {kind: depth, unit: millimetres}             # or `scale: 0.001`; `invalid: 0` (default)
normal: {kind: normal, encoding: rgb}               # rgb: n = v/127.5 - 1; unit: float vectors
edge: {kind: edge, derived_from: seg}               # or stored: `value: 255` marks an edge
male: {kind: binary, negative: -1}                  # a number per row; `positive: 1` (default)
```

A declaration may also be just the kind (`edge: edge`). Unknown kinds or options, bad values and
columns named after another kind (a `depth` column of kind `seg` would get a depth task) are
errors naming the column.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lightning_mtl.registry import Registry
from lightning_mtl.targets import IGNORE_INDEX, TARGET_KINDS, TargetSpec

from ..decoding import (
    channels_last,
    depth_from_metres,
    edge_from_binary,
    finite,
    image_from_float,
    image_from_uint8,
    load_image,
    load_npy,
    normal_from_float,
    normal_from_uint8,
    seg_from_labels,
)


class ManifestError(ValueError):
    """A manifest, its column declarations or a file it names is malformed or unexpected."""


IMAGE_FILES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_FILES = (".npy", ".npz")
#: depth units by name: stored value × factor = metres
UNITS = {
    **dict.fromkeys(("metres", "meters", "m"), 1.0),
    **dict.fromkeys(("centimetres", "centimeters", "cm"), 0.01),
    **dict.fromkeys(("millimetres", "millimeters", "mm"), 0.001),
}


def read_array(path: Path, modes: Sequence[str]) -> np.ndarray:
    """The array a file holds: a `.npy`, the one array of a `.npz`, or an image's pixels (its
    PIL mode one of `modes`)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if len(archive.files) != 1:
                raise ValueError(f"holds the arrays {archive.files}, expected exactly one")
            return archive[archive.files[0]]
    return load_image(path, modes)


@dataclass(frozen=True)
class FileColumn:
    """A column of file paths (relative to the root) decoded into the array layout of `kind`.

    `modes`: the PIL modes of image files it accepts (empty: arrays only); `expected` says what
    a file must hold, for errors.
    """

    kind: str
    expected: str
    convert: Callable[[np.ndarray], np.ndarray]
    modes: tuple[str, ...] = ()
    num_classes: int | None = None

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(self.kind, num_classes=self.num_classes)

    def parse(self, cell: str, root: Path) -> Path:
        """The file a cell names; its type must be one this column reads."""
        suffixes = (*(IMAGE_FILES if self.modes else ()), *ARRAY_FILES)
        if Path(cell).suffix.lower() not in suffixes:
            raise ValueError(f"{cell!r} is not a {'/'.join(suffixes)} file path")
        return root / cell

    def load(self, path: Path) -> np.ndarray:
        return self.convert(read_array(path, self.modes))


@dataclass(frozen=True)
class LabelColumn:
    """An image-level yes/no label stored as a number in the cell: `positive` or `negative`."""

    positive: float = 1.0
    negative: float = 0.0
    kind: ClassVar[str] = "binary"
    spec: ClassVar[TargetSpec] = TargetSpec("binary")

    @property
    def expected(self) -> str:
        return f"the number {self.positive:g} (yes) or {self.negative:g} (no)"

    def parse(self, cell: str, root: Path) -> np.float32:
        """1 for `positive`, 0 for `negative`."""
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{cell!r} is not a number") from None
        if value not in (self.positive, self.negative):
            raise ValueError(f"{cell!r} is neither label value")
        return np.float32(value == self.positive)


@dataclass(frozen=True)
class DerivedEdges:
    """Edges derived from the labels of the seg column `source` (`label_edges`); not stored."""

    source: str
    kind: ClassVar[str] = "edge"
    spec: ClassVar[TargetSpec] = TargetSpec("edge")


Column = FileColumn | LabelColumn | DerivedEdges

#: column declarations by kind: each builds the `Column` of a declaration's options
COLUMN_KINDS: Registry[Callable[..., Column]] = Registry("manifest column kind")


def image_from_array(a: np.ndarray) -> np.ndarray:
    """An RGB image: 8-bit values → [0,1]; floats in [0,1] kept; [H,W,3] or [3,H,W]."""
    if a.dtype == np.uint8:
        return image_from_uint8(channels_last(a, 3))
    return image_from_float(a)


#: the `image` column every manifest has
IMAGE = FileColumn(
    "image",
    "an 8-bit RGB image (png, jpg, tif) or floats [H,W,3] or [3,H,W] in [0,1] (npy, npz)",
    image_from_array,
    modes=("RGB",),
)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@COLUMN_KINDS.register("seg")
def seg_column(classes: int, ignore: int = IGNORE_INDEX, first: int = 0) -> FileColumn:
    """Per-pixel labels: stored `first`.. are classes 0..classes-1, `ignore` is unlabelled."""
    _require(
        _is_int(classes) and 1 <= classes <= IGNORE_INDEX,
        f"classes must be an int in 1..255, got {classes!r}",
    )
    _require(
        _is_int(ignore) and _is_int(first),
        f"ignore and first must be ints, got {ignore!r}, {first!r}",
    )
    last = first + classes - 1
    return FileColumn(
        "seg",
        f"labels [H,W] in {first}..{last} and {ignore} (unlabelled): an 8/16-bit image or an array",
        partial(seg_from_labels, ignore=ignore, first=first, num_classes=classes),
        modes=("L", "P", "I;16", "I"),
        num_classes=classes,
    )


def depth_from_stored(a: np.ndarray, scale: float, invalid: float) -> np.ndarray:
    """Stored depth × `scale` → metres; `invalid` entries → 0 (invalid)."""
    return depth_from_metres(np.where(a == invalid, 0, a), scale)


@COLUMN_KINDS.register("depth")
def depth_column(
    unit: str | None = None, scale: float | None = None, invalid: float = 0
) -> FileColumn:
    """Depth maps: stored value × `scale` = metres (`unit` names the scale: metres, centimetres,
    millimetres); `invalid` marks pixels without depth."""
    _require(unit is None or scale is None, "give unit or scale, not both")
    _require(
        unit is None or (isinstance(unit, str) and unit in UNITS),
        f"unit must be one of {list(UNITS)}, got {unit!r}",
    )
    _require(
        scale is None or (_is_number(scale) and scale > 0),
        f"scale must be a number > 0, got {scale!r}",
    )
    _require(_is_number(invalid), f"invalid must be a number, got {invalid!r}")
    factor = UNITS[unit] if unit is not None else 1.0 if scale is None else float(scale)
    what = unit or f"units of {factor:g} m"
    return FileColumn(
        "depth",
        f"depth [H,W] in {what} ({invalid:g} = invalid): a 16-bit or float image, or an array",
        partial(depth_from_stored, scale=factor, invalid=invalid),
        modes=("I;16", "I;16B", "I", "F"),
    )


def normal_from_rgb(a: np.ndarray) -> np.ndarray:
    """8-bit normals, n = v/127.5 − 1 re-normalised; (0,0,0) = invalid."""
    _require(a.dtype == np.uint8, f"dtype {a.dtype}, expected uint8 (encoding rgb)")
    return normal_from_uint8(channels_last(a, 3))


def normal_from_unit(a: np.ndarray) -> np.ndarray:
    """Float unit normals [H,W,3] or [3,H,W]; all-zero = invalid."""
    _require(
        np.issubdtype(a.dtype, np.floating), f"dtype {a.dtype}, expected floats (encoding unit)"
    )
    normal = normal_from_float(a)
    _require(np.abs(normal).max(initial=0) <= 1.001, "values beyond [-1, 1], expected unit vectors")
    return normal


#: normal encodings: (PIL modes, converter, what a file holds)
NORMAL_ENCODINGS = {
    "rgb": (("RGB",), normal_from_rgb, "8-bit RGB normals, n = v/127.5 - 1 ((0,0,0) = invalid)"),
    "unit": (
        (),
        normal_from_unit,
        "float unit normals [H,W,3] or [3,H,W] (all-zero = invalid) in npy/npz",
    ),
}


@COLUMN_KINDS.register("normal")
def normal_column(encoding: str) -> FileColumn:
    """Surface normals, `encoding` "rgb" (8-bit images) or "unit" (float arrays)."""
    _require(
        isinstance(encoding, str) and encoding in NORMAL_ENCODINGS,
        f"encoding must be one of {list(NORMAL_ENCODINGS)}, got {encoding!r}",
    )
    modes, convert, expected = NORMAL_ENCODINGS[encoding]
    return FileColumn("normal", expected, convert, modes=modes)


def edge_from_stored(a: np.ndarray, value: float) -> np.ndarray:
    """An edge map whose edge pixels hold `value` (the rest 0) → {0,1}; a 1-bit image is one."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    return edge_from_binary(finite(a) / np.float32(value))


@COLUMN_KINDS.register("edge")
def edge_column(value: float = 1, derived_from: str | None = None) -> FileColumn | DerivedEdges:
    """Edge maps stored with edge pixels = `value` (e.g. 255 in an 8-bit png), or, with
    `derived_from`, derived from that seg column's labels (no cells needed)."""
    if derived_from is not None:
        _require(
            isinstance(derived_from, str),
            f"derived_from must be a column name, got {derived_from!r}",
        )
        return DerivedEdges(derived_from)
    _require(_is_number(value) and value > 0, f"value must be a number > 0, got {value!r}")
    return FileColumn(
        "edge",
        f"an edge map [H,W] of 0 and {value:g} (edge): an image or an array",
        partial(edge_from_stored, value=value),
        modes=("1", "L", "P", "I;16", "I", "F"),
    )


@COLUMN_KINDS.register("binary")
def binary_column(positive: float = 1, negative: float = 0) -> LabelColumn:
    """An image-level yes/no label: the cell holds `positive` or `negative` (CelebA: 1, -1)."""
    _require(
        _is_number(positive) and _is_number(negative) and positive != negative,
        f"positive and negative must be two different numbers, got {positive!r}, {negative!r}",
    )
    return LabelColumn(float(positive), float(negative))


#: the manifest's own columns, never declared
RESERVED = ("split", "image")


def parse_columns(declarations: Any, where: str) -> dict[str, Column]:
    """The target columns of `declarations` (column → kind or {kind, options}), in order;
    `where` names their source in errors."""
    if not isinstance(declarations, Mapping) or not declarations:
        raise ManifestError(
            f"{where}: expected a mapping of target column name → declaration "
            f"({{kind: …, options}}), got {declarations!r}"
        )
    columns = {}
    for name, declaration in declarations.items():
        try:
            columns[name] = _column(name, declaration)
        except ValueError as e:
            raise ManifestError(f"{where}: column {name!r}: {e}") from e
    seg = [n for n, c in columns.items() if c.kind == "seg"]
    for name, column in columns.items():
        if isinstance(column, DerivedEdges) and column.source not in seg:
            raise ManifestError(
                f"{where}: column {name!r}: derived_from {column.source!r} is not a declared seg "
                f"column; the seg columns are {seg}"
            )
    return columns


def _column(name: Any, declaration: Any) -> Column:
    _require(isinstance(name, str) and name and "/" not in name, "expected a name without '/'")
    _require(name not in RESERVED, f"{name!r} is a column of every manifest; declare only targets")
    options = {"kind": declaration} if isinstance(declaration, str) else declaration
    _require(
        isinstance(options, Mapping),
        f"expected a kind or {{kind: …, options}}, got {declaration!r}",
    )
    options = dict(options)
    kind = options.pop("kind", None)
    _require(isinstance(kind, str), f"no kind; the kinds are {COLUMN_KINDS.names()}")
    build = COLUMN_KINDS.get(kind)
    _require(
        name == kind or name not in TARGET_KINDS,
        f"a column named after the target kind {name!r} must be of that kind, not {kind!r} "
        f"(its task would be a {name} task); rename it",
    )
    parameters = inspect.signature(build).parameters
    unknown = sorted(set(options) - set(parameters))
    _require(not unknown, f"unknown options {unknown}; a {kind} column takes {list(parameters)}")
    required = [
        p.name for p in parameters.values() if p.default is p.empty and p.name not in options
    ]
    _require(not required, f"a {kind} column needs {required}")
    return build(**options)
