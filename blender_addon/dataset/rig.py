"""Random views around an object in the unit box: the settings, the sampling, the camera matrices (no bpy).

World axes are Blender's (+Z up). The object is centred at the origin with its largest side 1. A view is a
pinhole camera on a sphere around the origin looking at it, with the world's +Z up in the image:

- azimuth uniform in [0°, 360°) (0° = on the +X axis, counter-clockwise seen from above),
- elevation uniform in the configured range (degrees above the XY plane),
- distance and horizontal field of view uniform in their ranges.

Matrices are OpenGL camera→world (x right, y up, z backward), row-major nested lists, as ``transforms.json`` holds
them.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass

MAX_DEPTH_STEPS = 65535
DEPTH_UNIT = 0.0001
"""World units per depth step in the 16-bit depth maps (``depth_unit_scale_factor``)."""
OBJECT_RADIUS = math.sqrt(3.0) / 2.0
"""The radius of the sphere around the unit box: no surface point is farther from the origin."""


@dataclass(frozen=True)
class RenderSettings:
    """What decides the pictures of one object; two runs with equal settings write the same files."""

    views: int = 24
    """Views per object."""
    size: int = 256
    """Width and height of every image, in pixels."""
    samples: int = 32
    """Cycles samples per pixel (no denoiser)."""
    seed: int = 0
    """Seed of the random views (each object draws its own from the seed and its name) and of procedural objects."""
    fov: tuple[float, float] = (30.0, 30.0)
    """Horizontal = vertical field of view range, degrees."""
    distance: tuple[float, float] = (2.35, 2.35)
    """Camera distance range from the object's centre, in world units (the object's largest side is 1)."""
    elevation: tuple[float, float] = (-10.0, 20.0)
    """Elevation range, degrees above the horizontal plane through the centre."""

    def problems(self) -> list[str]:
        """What is wrong with these settings, in words (empty when they can be rendered)."""
        found = []
        if self.views < 1:
            found.append(f"views must be at least 1, got {self.views}")
        if self.size < 4:
            found.append(f"size must be at least 4 pixels, got {self.size}")
        if self.samples < 1:
            found.append(f"samples must be at least 1, got {self.samples}")
        for name, (low, high) in (("fov", self.fov), ("distance", self.distance), ("elevation", self.elevation)):
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                found.append(f"{name} range must be MIN MAX with MIN ≤ MAX, got {low} {high}")
        if not (0.0 < self.fov[0] and self.fov[1] < 170.0):
            found.append(f"fov must lie in (0, 170) degrees, got {self.fov[0]}..{self.fov[1]}")
        if not (-89.0 <= self.elevation[0] and self.elevation[1] <= 89.0):
            found.append(f"elevation must lie in [-89, 89] degrees, got {self.elevation[0]}..{self.elevation[1]}")
        if self.distance[0] <= OBJECT_RADIUS:
            found.append(
                f"distance must exceed {OBJECT_RADIUS:.3f} (the unit box's half diagonal) so the camera is outside "
                f"the object, got {self.distance[0]}"
            )
        farthest = self.distance[1] + OBJECT_RADIUS
        if farthest / DEPTH_UNIT > MAX_DEPTH_STEPS:
            found.append(
                f"distance up to {self.distance[1]} puts surfaces {farthest:.2f} units away, beyond what a 16-bit "
                f"depth map holds at {DEPTH_UNIT} units per step ({MAX_DEPTH_STEPS * DEPTH_UNIT:.4f}): keep the "
                f"largest distance ≤ {MAX_DEPTH_STEPS * DEPTH_UNIT - OBJECT_RADIUS:.2f}"
            )
        return found

    def as_json(self) -> dict:
        """The settings as JSON values (ranges as 2-lists), as ``transforms.json`` stores them."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class View:
    """One camera: ``fov`` horizontal field of view (radians, square image), ``matrix`` 4×4 OpenGL camera→world."""

    fov: float
    matrix: tuple[tuple[float, ...], ...]
    azimuth: float
    elevation: float
    distance: float


def object_rng(seed: int, name: str) -> random.Random:
    """The random stream of one object's views: the same for the same seed and name in every run and process."""
    digest = hashlib.sha256(f"gtr-render-dataset/{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def sample_views(settings: RenderSettings, name: str) -> list[View]:
    """``settings.views`` random views of the object ``name`` (a fixed list for the same settings and name)."""
    rng = object_rng(settings.seed, name)
    views = []
    for _ in range(settings.views):
        azimuth = rng.uniform(0.0, 360.0)
        elevation = rng.uniform(*settings.elevation)
        distance = rng.uniform(*settings.distance)
        fov = rng.uniform(*settings.fov)
        views.append(
            View(
                fov=math.radians(fov),
                matrix=look_at_origin(azimuth, elevation, distance),
                azimuth=azimuth,
                elevation=elevation,
                distance=distance,
            )
        )
    return views


def look_at_origin(azimuth: float, elevation: float, distance: float) -> tuple[tuple[float, ...], ...]:
    """OpenGL camera→world matrix of a camera at (azimuth°, elevation°, distance) looking at the origin, +Z up."""
    az, el = math.radians(azimuth), math.radians(elevation)
    back = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))  # origin → camera, unit
    right = _normalised((-back[1], back[0], 0.0))  # (0, 0, 1) × back
    up = _cross(back, right)
    position = tuple(distance * b for b in back)
    return (
        (right[0], up[0], back[0], position[0]),
        (right[1], up[1], back[1], position[1]),
        (right[2], up[2], back[2], position[2]),
        (0.0, 0.0, 0.0, 1.0),
    )


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _normalised(v):
    length = math.sqrt(sum(x * x for x in v))
    return tuple(x / length for x in v)
