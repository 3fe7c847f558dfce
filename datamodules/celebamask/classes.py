"""CelebAMask-HQ parts → segmentation classes, and what a horizontal flip does to the classes.

A sample's part masks are first painted into the 19-class parsing (0 background, part k of
`PARTS` = k + 1, later parts overwriting earlier ones, as the official `g_mask.py` does);
a class map then relabels that parsing through a lookup table, so every class map sees the
same overlaps resolved the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: the 18 annotated parts in the official painting order (face_parsing/Data_preprocessing/
#: g_mask.py): label k + 1 in the 19-class parsing; a later part overwrites an earlier one
PARTS: tuple[str, ...] = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
#: the parts a horizontal flip turns into each other (`u_lip`/`l_lip` are upper/lower)
MIRRORED: dict[str, str] = {
    **{f"l_{p}": f"r_{p}" for p in ("eye", "brow", "ear")},
    **{f"r_{p}": f"l_{p}" for p in ("eye", "brow", "ear")},
}
#: the face (skin and every facial part, glasses included) and hair; the rest is background
FACE_PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear")
FACE_PARTS += ("mouth", "u_lip", "l_lip")
CLASS_MAPS: dict[str, dict[str, int]] = {
    "3": {**dict.fromkeys(FACE_PARTS, 1), "hair": 2},
    "19": {part: k + 1 for k, part in enumerate(PARTS)},
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "3": ("background", "skin", "hair"),
    "19": ("background", *PARTS),
}


def class_map(parts: str | Mapping[str, int]) -> dict[str, int]:
    """The part → class map named by `parts` ("3" or "19") or given as a dict (unlisted parts and
    the background are class 0)."""
    if isinstance(parts, str):
        if parts not in CLASS_MAPS:
            raise ValueError(f"parts must be one of {list(CLASS_MAPS)} or a dict, got {parts!r}")
        return dict(CLASS_MAPS[parts])
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown CelebAMask-HQ parts {unknown}; the parts are {list(PARTS)}")
    bad = {p: c for p, c in parts.items() if not isinstance(c, int) or not 0 <= c < 255}
    if bad:
        raise ValueError(f"part classes must be ints in [0, 255), got {bad}")
    return dict(parts)


def num_classes(mapping: Mapping[str, int]) -> int:
    return max(mapping.values(), default=0) + 1


def parsing_lut(mapping: Mapping[str, int]) -> np.ndarray:
    """Lookup table: 19-class parsing label → class under `mapping`."""
    return np.array([0] + [mapping.get(p, 0) for p in PARTS], dtype=np.int64)


def flip_label_map(mapping: Mapping[str, int]) -> tuple[int, ...]:
    """`flip[c]` = the class of class c's pixels after a horizontal flip (l_/r_ parts swap).

    Raises when a class holds a sided part together with parts whose mirrors land elsewhere
    (e.g. `l_eye` and `skin` in one class, `r_eye` in another): no relabelling is then right.
    """
    n = num_classes(mapping)
    mirrors: dict[int, set[int]] = {c: set() for c in range(n)}
    mirrors[0].add(0)  # the background mirrors to itself
    for part in PARTS:
        mirrors[mapping.get(part, 0)].add(mapping.get(MIRRORED.get(part, part), 0))
    ambiguous = {c: sorted(m) for c, m in mirrors.items() if len(m) > 1}
    if ambiguous:
        raise ValueError(
            f"class map {dict(mapping)} cannot be flipped: classes {ambiguous} (class: classes of "
            "its parts' mirror images) mix l_/r_ parts with others; give each side its own class"
        )
    flip = tuple(next(iter(m)) if m else c for c, m in mirrors.items())
    if sorted(flip) != list(range(n)):
        raise ValueError(f"class map {dict(mapping)} does not flip to a permutation: {flip}")
    return flip
