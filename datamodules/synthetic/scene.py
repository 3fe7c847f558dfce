"""Random indoor scene descriptions: a box room, wall patches, floor primitives, a camera, a light.

World frame: x and z span the floor, y points up, the floor is y = 0. Everything is drawn from
one `numpy.random.Generator`, so a scene is a pure function of the generator's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "floor",
    "ceiling",
    "wall",
    "window",
    "picture",
    "box",
    "sphere",
    "cylinder",
)
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

#: horizontal field of view of the pinhole camera (Kinect-like)
HFOV_DEG = 60.0


@dataclass(frozen=True)
class Material:
    """Albedo times a procedural pattern: `stripes` (sine along `axis`) or a 3-D `checker`."""

    albedo: np.ndarray  # (3,) in [0, 1]
    pattern: str
    axis: np.ndarray  # (3,) unit stripe direction
    freq: float  # stripes: radians per metre; checker: cells per metre
    amp: float  # relative contrast of the pattern
    phase: np.ndarray  # (3,) checker cell offset


@dataclass(frozen=True)
class Primitive:
    """A floor-standing object. `box`: axis-aligned, `size` = half extents (x, y, z);
    `sphere`: `size[0]` = radius; `cylinder`: vertical, `size` = (radius, half height, -)."""

    kind: str
    center: np.ndarray  # (3,)
    size: np.ndarray  # (3,)
    material: Material


@dataclass(frozen=True)
class Patch:
    """A flat rectangle on a wall (`window` or `picture`), coplanar with it.

    `wall` is `(axis, side)` with axis 0 (x) or 2 (z) and side 0 (low) or 1 (high); `lo`/`hi`
    bound the patch in (horizontal coordinate along the wall, height y).
    """

    kind: str
    wall: tuple[int, int]
    lo: np.ndarray  # (2,)
    hi: np.ndarray  # (2,)
    material: Material


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; `rotation` maps camera coordinates (x right, y down, z forward) to world."""

    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3), columns = camera axes in world coordinates
    focal: float  # pixels, square pixels, principal point at the image centre
    image_size: tuple[int, int]  # (H, W)


@dataclass(frozen=True)
class Scene:
    """Everything the ray caster needs to render one image."""

    room: np.ndarray  # (3,) extents: x in [-Lx/2, Lx/2], y in [0, Ly], z in [-Lz/2, Lz/2]
    floor: Material
    ceiling: Material
    wall: Material
    patches: tuple[Patch, ...]
    primitives: tuple[Primitive, ...]
    camera: Camera
    light: np.ndarray  # (3,) point light position
    ambient: float


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _material(rng: np.random.Generator, albedo: np.ndarray, pattern: str = "stripes") -> Material:
    return Material(
        albedo=np.clip(albedo, 0.02, 0.98),
        pattern=pattern,
        axis=_unit(rng.normal(size=3)),
        freq=float(rng.uniform(4.0, 20.0)) if pattern == "stripes" else float(rng.uniform(1, 3)),
        amp=float(rng.uniform(0.05, 0.25)),
        phase=rng.uniform(0.0, 1.0, size=3),
    )


def _camera(
    rng: np.random.Generator, room: np.ndarray, image_size: tuple[int, int]
) -> tuple[Camera, np.ndarray]:
    """A camera near eye height looking roughly at the room centre, tilted down; also returns
    its horizontal forward direction."""
    half = room[[0, 2]] / 2 - 0.5
    x, z = rng.uniform(-half, half)
    position = np.array([x, rng.uniform(1.2, 1.7), z])
    yaw = np.arctan2(-x, -z) + rng.uniform(-0.7, 0.7)  # 0 looks along +z
    pitch = np.deg2rad(rng.uniform(5.0, 25.0))
    forward_h = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    right = np.array([-np.cos(yaw), 0.0, np.sin(yaw)])  # forward_h x up
    forward = np.cos(pitch) * forward_h + np.sin(pitch) * np.array([0.0, -1.0, 0.0])
    down = np.cross(forward, right)
    focal = image_size[1] / 2 / np.tan(np.deg2rad(HFOV_DEG) / 2)
    rotation = np.stack([right, down, forward], axis=1)
    return Camera(position, rotation, float(focal), image_size), forward_h


def _primitive(
    rng: np.random.Generator, room: np.ndarray, camera: Camera, forward_h: np.ndarray
) -> Primitive:
    """A random primitive standing on the floor somewhere in the camera's view."""
    kind = str(rng.choice(["box", "sphere", "cylinder"]))
    if kind == "box":
        size = np.array([rng.uniform(0.15, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5)])
    elif kind == "sphere":
        size = np.full(3, rng.uniform(0.15, 0.5))
    else:
        r = rng.uniform(0.1, 0.35)
        size = np.array([r, rng.uniform(0.15, 0.5), r])
    dist = rng.uniform(1.3, 4.0)
    lateral = rng.uniform(-0.9, 0.9) * np.tan(np.deg2rad(HFOV_DEG) / 2) * dist
    x, _, z = camera.position + dist * forward_h + lateral * camera.rotation[:, 0]
    lim = room[[0, 2]] / 2 - size[[0, 2]] - 0.05
    x, z = np.clip([x, z], -lim, lim)
    center = np.array([x, size[1], z])  # resting on the floor, top below camera height
    return Primitive(kind, center, size, _material(rng, rng.uniform(0.1, 0.9, size=3)))


def _patch(rng: np.random.Generator, room: np.ndarray, forward_h: np.ndarray, kind: str) -> Patch:
    """A window or picture on one of the two walls the camera faces."""
    weights = np.abs(forward_h[[0, 2]])
    axis = int(rng.choice([0, 2], p=weights / weights.sum()))
    along = room[2 - axis]  # wall length: a wall x = const spans z and vice versa
    width = rng.uniform(0.5, min(1.6, along - 0.4))
    height = rng.uniform(0.8, 1.4) if kind == "window" else rng.uniform(0.4, 0.9)
    u0 = rng.uniform(-along / 2 + 0.2, along / 2 - 0.2 - width)
    v0 = rng.uniform(0.9, room[1] - 0.2 - height)
    if kind == "window":
        albedo = np.array([0.75, 0.85, 1.0]) * rng.uniform(0.85, 1.0)
    else:
        albedo = rng.uniform(0.05, 0.95, size=3)
    return Patch(
        kind,
        (axis, int(forward_h[axis] > 0)),
        np.array([u0, v0]),
        np.array([u0 + width, v0 + height]),
        _material(rng, albedo),
    )


def sample_scene(rng: np.random.Generator, image_size: tuple[int, int]) -> Scene:
    """Draw a random room with 0–1 windows, 0–2 pictures and 1–6 primitives in view."""
    room = np.array([rng.uniform(3.5, 7.0), rng.uniform(2.5, 3.2), rng.uniform(3.5, 7.0)])
    camera, forward_h = _camera(rng, room, image_size)
    wall_albedo = rng.uniform(0.5, 0.9) * (1 + rng.uniform(-0.1, 0.1, size=3))
    kinds = ["window"] * int(rng.integers(0, 2)) + ["picture"] * int(rng.integers(0, 3))
    patches = tuple(_patch(rng, room, forward_h, kind) for kind in kinds)
    primitives = tuple(_primitive(rng, room, camera, forward_h) for _ in range(rng.integers(1, 7)))
    light_x, light_z = rng.uniform(-room[[0, 2]] / 3, room[[0, 2]] / 3)
    light = np.array([light_x, room[1] - 0.1, light_z])
    return Scene(
        room=room,
        floor=_material(rng, rng.uniform(0.2, 0.7) * (1 + rng.uniform(-0.2, 0.2, 3)), "checker"),
        ceiling=_material(rng, np.full(3, rng.uniform(0.8, 0.95))),
        wall=_material(rng, wall_albedo),
        patches=patches,
        primitives=primitives,
        camera=camera,
        light=light,
        ambient=float(rng.uniform(0.2, 0.35)),
    )
