"""Typed data handed from the loader to the pipeline: views, bounds, the job; resizing a view."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

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


def downscale(view: View, max_size: int) -> View:
    """The view with its image (and mask, depth) resized so the longer side is at most ``max_size``."""
    H, W = view.rgb.shape[:2]
    if max(H, W) <= max_size:
        return view
    s = max_size / max(H, W)
    h, w = max(1, round(H * s)), max(1, round(W * s))

    def resize(a, mode):
        t = torch.as_tensor(a, dtype=torch.float32)
        t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
        out = torch.nn.functional.interpolate(t, size=(h, w), mode=mode)[0]
        return (out[0] if out.shape[0] == 1 and np.ndim(a) == 2 else out.permute(1, 2, 0)).numpy()

    return replace(
        view,
        camera=view.camera.scaled(w, h),
        rgb=resize(view.rgb, "area"),
        mask=None if view.mask is None else resize(view.mask, "area"),
        depth=None if view.depth is None else resize(view.depth, "nearest"),
    )


def evenly_spread(views: list[View], count: int) -> list[View]:
    """At most ``count`` of the views, evenly spread through the list (all of them when there are no more)."""
    if len(views) <= count:
        return list(views)
    return [views[i] for i in np.linspace(0, len(views) - 1, count).round().astype(int)]
