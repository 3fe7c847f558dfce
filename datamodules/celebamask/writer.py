"""`write_synthetic_celebamask`: drawn faces in the official CelebAMask-HQ layout.

Each face is a few analytic shapes (skin ellipse, hair, eyes/brows/ears on both sides, nose,
lips, optional glasses, hat, earrings, necklace) evaluated at pixel centres, so the half-size
masks and the image show the same face. The attributes the drawing shows (`Male`: short hair,
maybe a beard; `Smiling`: upturned lips; `Eyeglasses`, `Wearing_Hat`, hair colour, …) agree
with it; the others are random. Deterministic per `(seed, id)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .classes import PARTS
from .layout import (
    ATTRIBUTE_FILE,
    ATTRIBUTES,
    IMAGE_DIR,
    MAPPING_FILE,
    image_path,
    mask_path,
)

HAIR_COLOURS = {
    "Black_Hair": (0.08, 0.06, 0.05),
    "Blond_Hair": (0.85, 0.72, 0.40),
    "Brown_Hair": (0.40, 0.25, 0.12),
    "Gray_Hair": (0.62, 0.62, 0.62),
}
PART_COLOURS = {
    "nose": (0.80, 0.58, 0.48), "eye_g": (0.05, 0.05, 0.08), "l_eye": (0.15, 0.20, 0.35),
    "r_eye": (0.15, 0.20, 0.35), "l_brow": (0.20, 0.12, 0.08), "r_brow": (0.20, 0.12, 0.08),
    "l_ear": (0.85, 0.62, 0.52), "r_ear": (0.85, 0.62, 0.52), "mouth": (0.25, 0.05, 0.08),
    "u_lip": (0.70, 0.30, 0.30), "l_lip": (0.70, 0.30, 0.30), "ear_r": (0.95, 0.85, 0.20),
    "neck_l": (0.90, 0.90, 0.95), "neck": (0.82, 0.60, 0.50),
}  # fmt: skip


def write_synthetic_celebamask(
    root: str | Path, num_images: int, image_size: int = 64, seed: int = 0
) -> Path:
    """Write `num_images` faces (`image_size`² jpgs, half-size part masks), the attribute file
    (CelebA's column alignment: doubled spaces before positive values) and the id mapping
    (ids cycle train, train, train, val, test under CelebA's official partition)."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be an even int >= 16, got {image_size}")
    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id in range(num_images):
        face = _draw_params(np.random.default_rng([seed, image_id]))
        image = _render(face, _part_masks(face, image_size))
        Image.fromarray(image).save(image_path(root, image_id), quality=95)
        for part, mask in _part_masks(face, image_size // 2).items():
            if mask.any():  # as in the release: no file for an absent part
                path = mask_path(root, image_id, part)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        values = " ".join(f"{1 if face['attributes'][a] else -1:>2}" for a in ATTRIBUTES)
        rows.append(f"{image_id}.jpg {values}")
    header = [str(num_images), " ".join(ATTRIBUTES)]
    (root / ATTRIBUTE_FILE).write_text("\n".join(header + rows) + "\n")
    mapping = ["idx         orig_idx    orig_file"]
    for image_id in range(num_images):
        first = {0: 1, 1: 1, 2: 1, 3: 162771, 4: 182638}[image_id % 5]  # train/val/test
        number = first + image_id
        mapping.append(f"{image_id:<11} {number - 1:<11} {number:06d}.jpg")
    (root / MAPPING_FILE).write_text("\n".join(mapping) + "\n")
    return root


def _draw_params(rng: np.random.Generator) -> dict:
    """Face geometry and the attributes it shows (the rest drawn at random)."""
    attributes = {a: bool(rng.random() < 0.5) for a in ATTRIBUTES}
    male = bool(rng.random() < 0.5)
    beard = male and bool(rng.random() < 0.5)
    bald = male and bool(rng.random() < 0.2)
    smiling = bool(rng.random() < 0.5)
    hair = str(rng.choice(list(HAIR_COLOURS)))
    shown = {
        "Male": male,
        "Smiling": smiling,
        "Mouth_Slightly_Open": smiling and bool(rng.random() < 0.6),
        "Eyeglasses": bool(rng.random() < 0.3),
        "Wearing_Hat": bool(rng.random() < 0.2),
        "Wearing_Earrings": not male and bool(rng.random() < 0.5),
        "Wearing_Necklace": bool(rng.random() < 0.25),
        "Wearing_Lipstick": not male and bool(rng.random() < 0.6),
        "Pale_Skin": bool(rng.random() < 0.2),
        "Bald": bald,
        "No_Beard": not beard,
        "Goatee": beard,
        "Mustache": beard,
        "5_o_Clock_Shadow": beard,
        **{colour: colour == hair and not bald for colour in HAIR_COLOURS},
    }
    return {
        "attributes": {**attributes, **shown},
        "centre": (0.5 + rng.uniform(-0.03, 0.03), 0.55 + rng.uniform(-0.03, 0.03)),
        "radii": (rng.uniform(0.21, 0.25), rng.uniform(0.28, 0.32)),
        "background": rng.uniform(0.1, 0.9, size=3),
        "noise_seed": int(rng.integers(2**31)),
    }


def _part_masks(face: dict, size: int) -> dict[str, np.ndarray]:
    """Every part's bool mask [size,size] at pixel centres (overlaps resolved by `PARTS` order)."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    cx, cy = face["centre"]
    rx, ry = face["radii"]
    shown = face["attributes"]

    def ellipse(x0: float, y0: float, ax: float, ay: float) -> np.ndarray:
        return ((x - x0) / ax) ** 2 + ((y - y0) / ay) ** 2

    skin = ellipse(cx, cy, rx, ry) <= 1
    below_hairline = skin & (y > cy - 0.55 * ry)
    if shown["Bald"]:
        hair = np.zeros_like(skin)
    elif shown["Male"]:
        hair = (ellipse(cx, cy - 0.08, 1.12 * rx, ry) <= 1) & (y < cy - 0.2 * ry)
    else:
        hair = (ellipse(cx, cy - 0.02, 1.35 * rx, 1.25 * ry) <= 1) & (y < cy + 0.9 * ry)
    ex, ey = 0.42 * rx, cy - 0.12 * ry
    bend = 1.0 if shown["Smiling"] else -0.3
    t = (x - cx) / (0.38 * rx)
    lip_line = cy + 0.52 * ry - bend * 0.15 * ry * t**2
    gap = 0.03 * ry if shown["Mouth_Slightly_Open"] else 0.0
    in_mouth = np.abs(t) < 1
    neck_x = np.abs(x - cx) < 0.45 * rx
    masks = {
        "skin": skin,
        "nose": ellipse(cx, cy + 0.12 * ry, 0.11 * rx, 0.18 * ry) <= 1,
        "eye_g": np.zeros_like(skin),
        "mouth": in_mouth & (np.abs(y - lip_line) <= gap),
        "u_lip": in_mouth & (y < lip_line - gap) & (y > lip_line - gap - 0.07 * ry),
        "l_lip": in_mouth & (y > lip_line + gap) & (y < lip_line + gap + 0.08 * ry),
        "hair": hair & ~below_hairline,
        "hat": (ellipse(cx, cy - 0.95 * ry, 1.2 * rx, 0.45 * ry) <= 1) & (y < cy - 0.6 * ry),
        "neck_l": neck_x & (np.abs(y - (cy + ry + 0.06 + 0.08 * ((x - cx) / rx) ** 2)) < 0.015),
        "neck": neck_x & (y > cy) & ~skin,
        "cloth": (np.abs(x - cx) < 0.42) & (y > cy + ry + 0.12),
    }
    for side, sign in (("l", -1), ("r", 1)):
        masks[f"{side}_eye"] = ellipse(cx + sign * ex, ey, 0.16 * rx, 0.07 * ry) <= 1
        masks[f"{side}_brow"] = ellipse(cx + sign * ex, ey - 0.2 * ry, 0.2 * rx, 0.045 * ry) <= 1
        masks[f"{side}_ear"] = ellipse(cx + sign * rx, cy, 0.13 * rx, 0.2 * ry) <= 1
        masks[f"{side}_ear_r"] = ellipse(cx + sign * rx, cy + 0.27 * ry, 0.05, 0.05) <= 1
        lens = ellipse(cx + sign * ex, ey, 0.3 * rx, 0.17 * ry)
        masks["eye_g"] |= (lens >= 1) & (lens <= 1.7)
    masks["ear_r"] = masks.pop("l_ear_r") | masks.pop("r_ear_r")
    masks["eye_g"] |= (np.abs(y - ey) < 0.012) & (np.abs(x - cx) < ex - 0.3 * rx)
    drawn = {
        "eye_g": "Eyeglasses",
        "hat": "Wearing_Hat",
        "ear_r": "Wearing_Earrings",
        "neck_l": "Wearing_Necklace",
    }
    for part, attribute in drawn.items():
        if not shown[attribute]:
            masks[part] = np.zeros_like(skin)
    return {part: masks[part] for part in PARTS}


def _render(face: dict, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The RGB uint8 image of `masks` (painted in `PARTS` order) with a little noise."""
    shown = face["attributes"]
    skin = np.array((0.95, 0.82, 0.75) if shown["Pale_Skin"] else (0.85, 0.64, 0.52))
    colours = {
        **PART_COLOURS,
        "skin": skin,
        "hair": next((HAIR_COLOURS[c] for c in HAIR_COLOURS if shown[c]), skin),
        "hat": (0.60, 0.10, 0.15),
        "cloth": (0.20, 0.30, 0.60),
    }
    if shown["Wearing_Lipstick"]:
        colours["u_lip"] = colours["l_lip"] = (0.85, 0.10, 0.20)
    image = np.broadcast_to(face["background"], (*masks["skin"].shape, 3)).copy()
    painted = np.full(masks["skin"].shape, "", dtype=object)
    for part in PARTS:
        image[masks[part]] = colours[part]
        painted[masks[part]] = part
    if not shown["No_Beard"]:  # a darker lower face, still labelled skin
        rows = np.arange(image.shape[0])[:, None] / image.shape[0]
        image[(painted == "skin") & (rows > face["centre"][1] + 0.25 * face["radii"][1])] *= 0.55
    noise = np.random.default_rng(face["noise_seed"]).normal(0, 0.02, image.shape)
    return (np.clip(image + noise, 0, 1) * 255).round().astype(np.uint8)
