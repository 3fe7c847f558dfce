"""The official CelebAMask-HQ layout: file names, parsers, per-sample readers, the root check.

```
root/CelebA-HQ-img/{id}.jpg                                  1024×1024 RGB
root/CelebAMask-HQ-mask-anno/{id // 2000}/{id:05d}_{part}.png 512×512 binary, absent = no part
root/CelebAMask-HQ-attribute-anno.txt                        count; 40 names; `{id}.jpg` ±1 ×40
root/CelebA-HQ-to-CelebA-mapping.txt                         `idx orig_idx orig_file` (optional)
```

Readers raise `FileNotFoundError` / `ValueError` naming the file (and line) and what was
expected; the parsers return their problems instead, so `check_celebamask` can list them all.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .classes import PARTS

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IDS_PER_MASK_DIR = 2000
#: the 40 CelebA attributes, in the attribute file's column order
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
#: CelebA's official partition by CelebA file number (list_eval_partition.txt: 0/1/2)
CELEBA_VAL_FIRST, CELEBA_TEST_FIRST = 162771, 182638
LAYOUT = (
    f"{IMAGE_DIR}/{{id}}.jpg, {MASK_DIR}/{{id//2000}}/{{id:05d}}_{{part}}.png, {ATTRIBUTE_FILE}"
    f" and, for the official split, {MAPPING_FILE}"
)
_ROW_ID = re.compile(r"(\d+)\.jpg")

AttributeRows = dict[int, np.ndarray]


def image_path(root: Path, image_id: int) -> Path:
    return root / IMAGE_DIR / f"{image_id}.jpg"


def mask_path(root: Path, image_id: int, part: str) -> Path:
    return root / MASK_DIR / str(image_id // IDS_PER_MASK_DIR) / f"{image_id:05d}_{part}.png"


def check_root(root: Path) -> None:
    """Raise when `root` is not a CelebAMask-HQ root (the data cannot be fetched here)."""
    missing = [name for name in (IMAGE_DIR, MASK_DIR, ATTRIBUTE_FILE) if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a CelebAMask-HQ root (missing {missing}). CelebAMask-HQ cannot be "
            "downloaded here: get it from https://github.com/switchablenorms/CelebAMask-HQ and "
            f"unpack it so that root holds {LAYOUT}; or pass synthesize=N to write N synthetic "
            "faces there, or write them with "
            "datamodules.celebamask.write_synthetic_celebamask(root, num_images)"
        )


def read_attribute_names(path: Path) -> list[str]:
    """The header of the attribute file (count line, 40 names), checked; rows are not read."""
    with open(path) as f:
        head = [f.readline(), f.readline()]
    problems = _header_problems(path, head)
    if problems:
        raise ValueError(problems[0])
    return head[1].split()


def _header_problems(path: Path, head: list[str]) -> list[str]:
    problems = []
    if not head[0].strip().isdigit():
        problems.append(f"{path} line 1: expected the number of images, got {head[0].strip()!r}")
    if head[1].split() != list(ATTRIBUTES):
        problems.append(
            f"{path} line 2: expected the 40 CelebA attribute names "
            f"({' '.join(ATTRIBUTES)}), got {head[1].strip()!r}"
        )
    return problems


def parse_attributes(path: Path) -> tuple[AttributeRows, list[str]]:
    """Rows `{id}.jpg v1 … v40` (any whitespace) as id → int8 ±1 values, and every problem."""
    lines = path.read_text().splitlines()
    problems = _header_problems(path, [*lines, "", ""][:2])
    rows: AttributeRows = {}
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if not tokens:
            continue
        match = _ROW_ID.fullmatch(tokens[0])
        if match is None or len(tokens) != 1 + len(ATTRIBUTES):
            problems.append(
                f"{path} line {number}: expected '{{id}}.jpg' and {len(ATTRIBUTES)} values ±1, "
                f"got {len(tokens)} fields starting {tokens[0]!r}"
            )
            continue
        bad = [(a, v) for a, v in zip(ATTRIBUTES, tokens[1:], strict=True) if v not in ("1", "-1")]
        if bad:
            problems.append(f"{path} line {number}: expected 1 or -1, got {bad[:3]} (name, value)")
            continue
        image_id = int(match.group(1))
        if image_id in rows:
            problems.append(f"{path} line {number}: a second row for {tokens[0]}")
        rows[image_id] = np.array(tokens[1:], dtype=np.int8)
    count = lines[0].strip() if lines else ""
    if count.isdigit() and int(count) != len(rows):
        problems.append(f"{path} line 1: says {count} images, the file has {len(rows)} rows")
    return rows, problems


def parse_mapping(path: Path) -> tuple[dict[int, int], list[str]]:
    """CelebA-HQ id → CelebA file number (`orig_file`, 1-based), and every problem."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the official split maps CelebA-HQ ids to CelebA images with "
            f"{MAPPING_FILE} (columns idx orig_idx orig_file) from the CelebAMask-HQ release"
        )
    lines = path.read_text().splitlines()
    problems = []
    if not lines or lines[0].split() != ["idx", "orig_idx", "orig_file"]:
        problems.append(f"{path} line 1: expected the header 'idx orig_idx orig_file'")
    numbers: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens:
            continue
        match = _ROW_ID.fullmatch(tokens[-1])
        if len(tokens) != 3 or not tokens[0].isdigit() or match is None:
            problems.append(
                f"{path} line {number}: expected 'idx orig_idx {{celeba number}}.jpg', got {line!r}"
            )
            continue
        numbers[int(tokens[0])] = int(match.group(1))
    return numbers, problems


def official_partition(celeba_number: int) -> str:
    """CelebA's split of its image `{celeba_number:06d}.jpg` (list_eval_partition.txt)."""
    if celeba_number < CELEBA_VAL_FIRST:
        return "train"
    return "val" if celeba_number < CELEBA_TEST_FIRST else "test"


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H,W,3], resized (antialiased) to `size` = (W, H) if given."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected the CelebA-HQ image")
    try:
        with Image.open(path) as im:
            if size is not None:
                im.draft("RGB", size)  # JPEG: decode at a reduced scale, much faster
            im = im.convert("RGB")
            if size is not None and im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or truncated image ({err}); expected a JPEG") from err


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the image header."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected the CelebA-HQ image")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: unreadable image ({err}); expected a JPEG") from err


def mask_sizes(image_wh: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Accepted mask sizes: half the image (official: 512² for 1024²) or the image's own."""
    w, h = image_wh
    return (w // 2, h // 2), (w, h)


def load_mask(path: Path, allowed: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A part mask as bool [H,W] (non-zero = part); its size (W, H) must be in `allowed`."""
    try:
        with Image.open(path) as im:
            if im.size not in allowed:
                raise ValueError(
                    f"{path}: mask is {im.size[0]}×{im.size[1]}, expected "
                    + " or ".join(f"{w}×{h}" for w, h in allowed)
                    + " (half the image's size or the image's; one size for all of an id's masks)"
                )
            mask = np.asarray(im)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: unreadable or truncated mask ({err}); expected a PNG") from err
    return (mask.any(axis=-1) if mask.ndim == 3 else mask) != 0


def load_parsing(root: Path, image_id: int, image_wh: tuple[int, int]) -> np.ndarray:
    """The 19-class parsing [H,W] uint8 of one id at its masks' resolution (`classes` doc)."""
    parsing: np.ndarray | None = None
    allowed = mask_sizes(image_wh)
    for label, part in enumerate(PARTS, start=1):
        path = mask_path(root, image_id, part)
        if not path.exists():
            continue
        mask = load_mask(path, allowed)
        if parsing is None:
            parsing = np.zeros(mask.shape, dtype=np.uint8)
            allowed = ((mask.shape[1], mask.shape[0]),)  # the rest must match the first
        parsing[mask] = label
    if parsing is None:
        skin = mask_path(root, image_id, "skin")
        raise FileNotFoundError(f"no part masks for id {image_id}: expected at least {skin}")
    return parsing


def check_celebamask(root: str | Path) -> list[str]:
    """Every problem in a CelebAMask-HQ root (empty = fine): layout, attribute and mapping files,
    ids without image or attribute row, and every image and mask read in full."""
    root = Path(root)
    try:
        check_root(root)
    except FileNotFoundError as err:
        return [str(err)]
    rows, problems = parse_attributes(root / ATTRIBUTE_FILE)
    ids = image_ids(root)
    problems += id_problems(root, rows, ids)
    if (root / MAPPING_FILE).exists():
        numbers, mapping_problems = parse_mapping(root / MAPPING_FILE)
        problems += mapping_problems
        missing = sorted(ids - numbers.keys())
        if missing:
            problems.append(f"{root / MAPPING_FILE}: no row for ids {missing[:10]}")
    for i in sorted(ids):
        problems += _sample_problems(root, i)
    return problems


def image_ids(root: Path) -> set[int]:
    """Ids of the `{id}.jpg` files in the image folder."""
    return {
        int(m.group(1)) for p in (root / IMAGE_DIR).iterdir() if (m := _ROW_ID.fullmatch(p.name))
    }


def id_problems(root: Path, rows: AttributeRows, ids: set[int]) -> list[str]:
    """Images without an attribute row and attribute rows without an image."""
    path = root / ATTRIBUTE_FILE
    return [
        f"{image_path(root, i)}: id {i} has no row in {path}" for i in sorted(ids - rows.keys())
    ] + [
        f"{image_path(root, i)} not found: {path} has a row for id {i}"
        for i in sorted(rows.keys() - ids)
    ]


def _sample_problems(root: Path, image_id: int) -> list[str]:
    """Problems of one id's image and masks, one per bad file."""
    problems = []
    path = image_path(root, image_id)
    try:
        wh = image_size(path)
        load_image(path)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    allowed = mask_sizes(wh)
    paths = [mask_path(root, image_id, part) for part in PARTS]
    if not any(p.exists() for p in paths):
        problems.append(f"no part masks for id {image_id}: expected at least {paths[0]}")
    for p in paths:
        if p.exists():
            try:
                mask = load_mask(p, allowed)
                allowed = ((mask.shape[1], mask.shape[0]),)  # the rest must match
            except ValueError as err:
                problems.append(str(err))
    return problems
