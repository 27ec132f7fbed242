"""Stage 2 — map the user's world into the canonical frame (object inside [-1, 1]³) and back.

Bounds come from the job when given; otherwise from a visual hull of the masks, carved first in a loose box
around the point the cameras look at and then tightened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .frame import CanonicalFrame, frame_for_bounds
from .hull import carve, lattice
from .inputs.validate import check_sees_bounds
from .progress import Hooks
from .views import Bounds, View

LOOKS_AWAY_FIX = (
    "this camera looks away from the object the other views agree on: check its pose (world_to_camera is "
    "OpenCV world-to-camera; a camera-to-world or OpenGL matrix must be converted), or remove the view."
)


@dataclass(frozen=True)
class NormaliseConfig:
    margin: float = 0.08
    """Extra room around the object, as a fraction of its half-size, inside [-1, 1]³."""
    hull_resolution: int = 96
    """Cells per side of the grid used to estimate bounds from the masks."""
    estimated_size: float = 0.75
    """Views without masks and a job without bounds: the estimated bounds' half-size as a fraction of the radius
    the median camera sees around the point the cameras look at."""


def look_at_point(views: list[View]) -> np.ndarray:
    """Least-squares point closest to every camera's optical axis (the point the rig looks at)."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for v in views:
        d = v.camera.forward
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ v.camera.centre
    if np.linalg.cond(A) > 1e8:  # all axes parallel: fall back to a point in front of the cameras
        return np.mean([v.camera.centre + v.camera.forward for v in views], axis=0)
    return np.linalg.solve(A, b)


def _loose_half_size(views: list[View], centre: np.ndarray) -> float:
    sizes = []
    for v in views:
        cam = v.camera
        if cam.orthographic:
            sizes.append(0.5 * max(cam.width / cam.K[0, 0], cam.height / cam.K[1, 1]))
        else:
            dist = float(np.linalg.norm(cam.centre - centre))
            sizes.append(dist * 0.5 * max(cam.width / cam.K[0, 0], cam.height / cam.K[1, 1]))
    return float(np.median(sizes))


def bounds_from_masks(views: list[View], config: NormaliseConfig, device, hooks: Hooks | None = None) -> Bounds:
    """Carve twice (loose box, then the occupied box grown by 15 %) and return the occupied box.

    Raises :class:`InputError` naming the view when a camera does not see that box (looks away from the object).
    """
    cams = [v.camera for v in views]
    masks = [v.mask for v in views]
    centre = look_at_point(views)
    half = _loose_half_size(views, centre)
    lo, hi = centre - half, centre + half
    for _ in range(2):
        res = config.hull_resolution
        pts = lattice(lo, hi, res, device)
        keep = carve(cams, masks, pts, hooks=hooks)
        if not bool(keep.any()):
            raise InputError(
                "the masks do not agree on any region of space: the visual hull is empty.",
                fix="check that the cameras match the images (convention, units) and that the masks cover the object.",
            )
        occ = pts[keep].cpu().numpy()
        cell = (hi - lo) / res
        new_lo, new_hi = occ.min(0) - cell, occ.max(0) + cell
        grow = 0.15 * (new_hi - new_lo)
        lo, hi = new_lo - grow, new_hi + grow
    bounds = Bounds(centre=(new_lo + new_hi) / 2, size=new_hi - new_lo)
    for index, view in enumerate(views):  # a camera looking away from the object carves nothing: catch it here
        check_sees_bounds(view, index, bounds, "the object (the masks' visual hull)", LOOKS_AWAY_FIX)
    return bounds


def bounds_from_cameras(views: list[View], config: NormaliseConfig) -> Bounds:
    """A cube around the point the cameras look at, sized from what the median camera sees there (for views
    without masks in a job without bounds). Raises :class:`InputError` naming a view that does not see it."""
    centre = look_at_point(views)
    half = config.estimated_size * _loose_half_size(views, centre)
    bounds = Bounds(centre=centre, size=np.full(3, 2 * half))
    for index, view in enumerate(views):
        check_sees_bounds(view, index, bounds, "the point the cameras look at", LOOKS_AWAY_FIX)
    return bounds


def normalise(
    views: list[View], bounds: Bounds | None, config: NormaliseConfig, device, hooks: Hooks | None = None
) -> tuple[list[View], CanonicalFrame, Bounds]:
    """Views in the canonical frame, the frame, and the world bounds that were used."""
    if bounds is None:
        if any(v.mask is None for v in views):
            raise InputError(
                "no bounds and no masks: the object's extent is unknown.",
                fix="give images with alpha, mask files, a background colour key, or job bounds.",
            )
        with torch.no_grad():
            bounds = bounds_from_masks(views, config, device, hooks)
    frame = frame_for_bounds(bounds, 1.0 / (1.0 + config.margin))
    return [frame.view_to_canonical(v) for v in views], frame, bounds
