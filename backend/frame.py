"""The canonical frame both methods work in, and the way back to the user's world.

Every stage after loading works in a canonical frame where the object lies inside [-1, 1]³. One type describes the
map for both methods (see :class:`CanonicalFrame`); the mesh goes back to the world with ``world_from_canonical``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .cameras import Camera
from .errors import InputError
from .views import Bounds, View


@dataclass(frozen=True)
class CanonicalFrame:
    """The similarity world → canonical: ``canonical = scale · rotation · (world − centre)``.

    ``rotation`` (3, 3) is proper (det +1): the identity for the ``fit`` method, the user's up axis → +Y for the
    ``gtr`` method. ``scale`` > 0 is canonical units per world unit.
    """

    centre: np.ndarray
    rotation: np.ndarray
    scale: float

    def to_canonical_points(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points → (N, 3) canonical points."""
        return self.scale * (np.asarray(points, dtype=np.float64) - self.centre) @ self.rotation.T

    def to_world_points(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) canonical points → (N, 3) world points."""
        return (np.asarray(points, dtype=np.float64) / self.scale) @ self.rotation + self.centre

    @property
    def world_from_canonical(self) -> np.ndarray:
        """(4, 4) float64 similarity canonical → world (scale included), e.g. for ``Mesh.transformed``."""
        m = np.eye(4)
        m[:3, :3] = self.rotation.T / self.scale
        m[:3, 3] = self.centre
        return m

    @property
    def canonical_from_world(self) -> np.ndarray:
        """(4, 4) float64 inverse of :attr:`world_from_canonical`."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = -self.scale * self.rotation @ self.centre
        return m

    def camera_to_canonical(self, camera: Camera) -> Camera:
        """The same camera (same image, same projections) expressed in the canonical frame."""
        world_from_rigid = np.eye(4)  # rigid part only: rigid = R · (world − centre); Camera.transformed scales
        world_from_rigid[:3, :3] = self.rotation.T
        world_from_rigid[:3, 3] = self.centre
        return camera.transformed(world_from_rigid, self.scale)

    def view_to_canonical(self, view: View) -> View:
        """The view with its camera in the canonical frame (depth rescaled to canonical units)."""
        depth = None if view.depth is None else view.depth * np.float32(self.scale)
        return replace(view, camera=self.camera_to_canonical(view.camera), depth=depth)


def frame_for_bounds(bounds: Bounds, extent: float, rotation: np.ndarray | None = None) -> CanonicalFrame:
    """The frame centring ``bounds`` and scaling their largest half-size to ``extent`` (≤ 1) canonical units,
    after ``rotation`` (default: none)."""
    half = float(np.max(np.asarray(bounds.size, dtype=np.float64))) / 2
    if not np.isfinite(half) or half <= 0:
        raise InputError("the bounds have zero or invalid size.", fix="give bounds with a positive size.")
    centre = np.asarray(bounds.centre, dtype=np.float64).copy()
    return CanonicalFrame(centre=centre, rotation=np.eye(3) if rotation is None else rotation, scale=extent / half)
