"""Typed data handed from the loader to the pipeline: views, bounds, the job."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cameras import Camera


@dataclass
class View:
    """One input image with its camera.

    ``rgb``: (H, W, 3) float32 sRGB in [0, 1] (not composited: where ``mask`` is 0 the colour is meaningless).
    ``mask``: (H, W) float32 in [0, 1], 1 = object, or None when the job gave no mask source.
    ``depth``: (H, W) float32 camera-z depth in world units, 0 where unknown; or None.
    """

    name: str
    camera: Camera
    rgb: np.ndarray
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None


@dataclass(frozen=True)
class Bounds:
    """Axis-aligned box in world units: ``centre`` (3,) and full edge lengths ``size`` (3,)."""

    centre: np.ndarray
    size: np.ndarray

    @property
    def minimum(self) -> np.ndarray:
        return self.centre - self.size / 2

    @property
    def maximum(self) -> np.ndarray:
        return self.centre + self.size / 2

    def corners(self) -> np.ndarray:
        """(8, 3) box corners."""
        lo, hi = self.minimum, self.maximum
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


@dataclass
class Job:
    """Everything the pipeline needs from the user: views, optional bounds, options (from job.json / CLI)."""

    views: list[View]
    bounds: Bounds | None = None
    options: dict = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    """What the loader noticed but accepted (unknown option keys, repeated images); ``pipeline.reconstruct``
    copies them into the result's warnings (``metrics.json``)."""
