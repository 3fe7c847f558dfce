"""Vectorised ray casting of a `Scene`: one ray per pixel, nearest hit, Lambertian shading.

Rays are vectorised over pixels; Python loops only run over the few patches and primitives.
Camera-frame ray directions have z = 1, so the ray parameter of a hit is its z-depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .scene import CLASS_IDS, Camera, Material, Scene

_EPS = 1e-6
#: room face index = 2 * axis + side: x-low, x-high, floor, ceiling, z-low, z-high
_FACE_CLASS = np.array([CLASS_IDS[c] for c in ("wall", "wall", "floor", "ceiling", "wall", "wall")])
#: material index per face into [floor, ceiling, wall, *patches, *primitives]
_FACE_MATERIAL = np.array([2, 2, 0, 1, 2, 2])
_NUM_FACES = 6
#: distance (m) at which the light's intensity has halved
_FALLOFF = 3.5


@dataclass(frozen=True)
class Render:
    """Noise-free per-pixel render of a scene.

    Normals are in camera coordinates (x right, y down, z forward) and face the camera.
    `instance` is unique per room face, wall patch and primitive within the image.
    """

    depth: np.ndarray  # (H, W) float32, z-depth in metres, > 0 everywhere
    normal: np.ndarray  # (3, H, W) float32 unit vectors
    semantic: np.ndarray  # (H, W) int64 class ids (`CLASS_NAMES`)
    instance: np.ndarray  # (H, W) int64
    rgb: np.ndarray  # (3, H, W) float32 in [0, 1]


def camera_rays(camera: Camera) -> np.ndarray:
    """World-frame ray directions (H*W, 3) through pixel centres, with camera-frame z = 1."""
    h, w = camera.image_size
    x = (np.arange(w) + 0.5 - w / 2) / camera.focal
    y = (np.arange(h) + 0.5 - h / 2) / camera.focal
    d = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.ones((1, 1))), axis=-1)
    return d.reshape(-1, 3) @ camera.rotation.T


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _room(o: np.ndarray, d: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance and face index of rays starting inside the room box."""
    lo = np.array([-room[0] / 2, 0.0, -room[2] / 2])
    side = (d > 0).astype(np.int64)
    with np.errstate(divide="ignore"):
        t = (np.where(side == 1, lo + room, lo) - o) / d
    t = np.where(np.isfinite(t), t, np.inf)  # d == 0 never exits through that pair
    axis = np.argmin(t, axis=1)
    rows = np.arange(len(d))
    return t[rows, axis], 2 * axis + side[rows, axis]


def _sphere(o, d, center, size) -> tuple[np.ndarray, np.ndarray]:
    oc = o - center
    a, b, c = _dot(d, d), _dot(d, oc), _dot(oc, oc) - size[0] ** 2
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    p = oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, p / size[0]


def _box(o, d, center, size) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (center - size - o) / d
        t2 = (center + size - o) / d
    tmin, tmax = np.fmin(t1, t2), np.fmax(t1, t2)
    axis = np.argmax(tmin, axis=1)
    rows = np.arange(len(d))
    near, far = tmin[rows, axis], tmax.min(axis=1)
    t = np.where((near <= far) & (near > _EPS), near, np.inf)
    n = np.zeros_like(d)
    n[rows, axis] = -np.sign(d[rows, axis])
    return t, n


def _cylinder(o, d, center, size) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder: radius `size[0]`, half height `size[1]`, with caps."""
    r, h = size[0], size[1]
    oc = o - center
    ox, oy, oz = np.moveaxis(np.broadcast_to(oc, d.shape), -1, 0)
    dx, dy, dz = d.T
    a, b, c = dx * dx + dz * dz, dx * ox + dz * oz, ox * ox + oz * oz - r * r
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        t_cap = (-h * np.sign(dy) - oy) / dy
    side_ok = (disc >= 0) & (t_side > _EPS) & (np.abs(oy + t_side * dy) <= h)
    cap_ok = (t_cap > _EPS) & ((ox + t_cap * dx) ** 2 + (oz + t_cap * dz) ** 2 <= r * r)
    t_side, t_cap = np.where(side_ok, t_side, np.inf), np.where(cap_ok, t_cap, np.inf)
    on_side = t_side <= t_cap
    t = np.minimum(t_side, t_cap)
    ts = np.where(np.isfinite(t), t, 0.0)
    side_n = np.stack([ox + ts * dx, np.zeros_like(ts), oz + ts * dz], axis=1) / r
    cap_n = np.stack([np.zeros_like(ts), -np.sign(dy), np.zeros_like(ts)], axis=1)
    return t, np.where(on_side[:, None], side_n, cap_n)


_HIT: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "sphere": _sphere,
    "box": _box,
    "cylinder": _cylinder,
}


def _texture(material: Material, p: np.ndarray) -> np.ndarray:
    """Albedo (n, 3) of a material at world points p (n, 3)."""
    if material.pattern == "checker":
        parity = np.floor(material.freq * p + material.phase).sum(axis=1) % 2
        factor = 1 + material.amp * (2 * parity - 1)
    else:
        factor = 1 + material.amp * np.sin(material.freq * p @ material.axis)
    return np.clip(material.albedo * factor[:, None], 0.0, 1.0)


def _shade(scene: Scene, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Ambient plus Lambertian point-light term with distance falloff and primitive shadows."""
    to_light = scene.light - p
    dist2 = _dot(to_light, to_light)
    lambert = np.clip(_dot(n, to_light) / np.sqrt(dist2), 0.0, None)
    lit = np.ones(len(p), dtype=bool)
    origin = p + 1e-4 * n
    for prim in scene.primitives:
        t, _ = _HIT[prim.kind](origin, to_light, prim.center, prim.size)
        lit &= t >= 1.0
    direct = lambert * lit * _FALLOFF**2 / (_FALLOFF**2 + dist2)
    return scene.ambient + (1 - scene.ambient) * direct


def render(scene: Scene) -> Render:
    """Cast one ray per pixel and shade the nearest hit."""
    cam = scene.camera
    o, d = cam.position, camera_rays(cam)
    t, face = _room(o, d, scene.room)
    normal = np.zeros_like(d)
    rows = np.arange(len(d))
    normal[rows, face // 2] = -np.sign(d[rows, face // 2])
    semantic, instance, material = _FACE_CLASS[face], face.copy(), _FACE_MATERIAL[face]

    p = o + t[:, None] * d
    for k, patch in enumerate(scene.patches):
        axis, side = patch.wall
        uv = p[:, [2 - axis, 1]]
        inside = (face == 2 * axis + side) & np.all((uv >= patch.lo) & (uv <= patch.hi), axis=1)
        semantic[inside] = CLASS_IDS[patch.kind]
        instance[inside] = _NUM_FACES + k
        material[inside] = 3 + k

    first_prim = len(scene.patches)
    for k, prim in enumerate(scene.primitives):
        tk, nk = _HIT[prim.kind](o, d, prim.center, prim.size)
        closer = tk < t
        t = np.where(closer, tk, t)
        normal[closer] = nk[closer]
        semantic[closer] = CLASS_IDS[prim.kind]
        instance[closer] = _NUM_FACES + first_prim + k
        material[closer] = 3 + first_prim + k

    p = o + t[:, None] * d
    materials = [scene.floor, scene.ceiling, scene.wall]
    materials += [x.material for x in scene.patches] + [x.material for x in scene.primitives]
    albedo = np.empty_like(p)
    for m, mat in enumerate(materials):
        sel = material == m
        if sel.any():
            albedo[sel] = _texture(mat, p[sel])
    shade = np.where(semantic == CLASS_IDS["window"], 1.0, _shade(scene, p, normal))

    h, w = cam.image_size
    return Render(
        depth=t.reshape(h, w).astype(np.float32),
        normal=(normal @ cam.rotation).T.reshape(3, h, w).astype(np.float32),
        semantic=semantic.reshape(h, w).astype(np.int64),
        instance=instance.reshape(h, w).astype(np.int64),
        rgb=np.clip(albedo * shade[:, None], 0.0, 1.0).T.reshape(3, h, w).astype(np.float32),
    )
