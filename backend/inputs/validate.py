"""Checks on a loaded :class:`Job`: every problem raises :class:`InputError` naming the view and the fix.

Missing / corrupt files are caught earlier, while loading (:mod:`backend.inputs.images`), and panoramic
cameras by the importers. :func:`validate_job` checks what only the whole job shows:

- at least 2 views;
- per view: image / mask / depth sizes equal the camera's ``width`` × ``height``; finite cameras;
  ``world_to_camera`` rigid (rotation orthonormal within 1e-3, determinant +1, last row ``[0, 0, 0, 1]``);
  ``K`` with positive focal lengths and last row ``[0, 0, 1]``;
- per view with a mask: some pixel of the mask is object (an empty mask would carve the object away);
- when bounds are known: finite and positive, and every camera sees them (the box centre in front of the
  camera, and the box's 9 projected points (corners + centre) not all off one side of the image); without
  bounds the same check runs on the bounds the pipeline takes from the masks
  (:func:`backend.normalise.bounds_from_masks`) or, for views without masks, from where the cameras look
  (:func:`backend.normalise.bounds_from_cameras`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..cameras import project
from ..errors import InputError
from ..views import Bounds, Job, View

ROTATION_TOLERANCE = 1e-3


def _check_sizes(view: View, index: int) -> None:
    cam = view.camera
    expected = (cam.height, cam.width)
    rgb = np.asarray(view.rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(
            f"image must be (H, W, 3), got shape {rgb.shape}",
            view=view.name,
            index=index,
            fix="load RGB or RGBA images.",
        )
    if rgb.shape[:2] != expected:
        raise InputError(
            f"image size {rgb.shape[1]}x{rgb.shape[0]} does not match the camera's {cam.width}x{cam.height}",
            view=view.name,
            index=index,
            fix="use the image the camera was made for, or correct the camera's width/height and K to the image.",
        )
    if view.mask is not None and np.shape(view.mask) != expected:
        shape = np.shape(view.mask)
        raise InputError(
            f"mask size {shape[1::-1] if len(shape) >= 2 else shape} does not match the image's "
            f"{cam.width}x{cam.height}",
            view=view.name,
            index=index,
            fix="export the mask at the image's resolution.",
        )
    if view.depth is not None and np.shape(view.depth) != expected:
        shape = np.shape(view.depth)
        raise InputError(
            f"depth size {shape[1::-1] if len(shape) >= 2 else shape} does not match the image's "
            f"{cam.width}x{cam.height}",
            view=view.name,
            index=index,
            fix="export the depth map at the image's resolution.",
        )


def _check_camera(view: View, index: int) -> None:
    w2c, K = np.asarray(view.camera.world_to_camera, dtype=np.float64), np.asarray(view.camera.K, dtype=np.float64)
    name = view.name
    if w2c.shape != (4, 4) or K.shape != (3, 3):
        raise InputError(
            f"camera matrices must be 4x4 and 3x3, got {w2c.shape} and {K.shape}",
            view=name,
            index=index,
            fix="give a 4x4 world_to_camera and a 3x3 K.",
        )
    if not (np.all(np.isfinite(w2c)) and np.all(np.isfinite(K))):
        raise InputError(
            "camera matrix holds non-finite values (NaN or inf)",
            view=name,
            index=index,
            fix="re-export the camera; check for a zero scale or a degenerate look-at.",
        )
    if not np.allclose(w2c[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(
            f"world_to_camera's last row must be [0, 0, 0, 1], got {w2c[3].tolist()}",
            view=name,
            index=index,
            fix="write a rigid 4x4 matrix (rotation + translation).",
        )
    rotation = w2c[:3, :3]
    error = np.abs(rotation @ rotation.T - np.eye(3)).max()
    if error > ROTATION_TOLERANCE:
        raise InputError(
            f"world_to_camera is not a rigid transform: its rotation is not orthonormal (error {error:.3g}; "
            "singular, scaled or sheared)",
            view=name,
            index=index,
            fix="remove scale from the camera (apply scale in Blender) and export rotation + translation only.",
        )
    if np.linalg.det(rotation) < 0:
        raise InputError(
            "world_to_camera is a reflection (determinant < 0), not a rotation",
            view=name,
            index=index,
            fix="check the axis convention: OpenCV x right, y down, z forward.",
        )
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise InputError(
            f"K's last row must be [0, 0, 1], got {K[2].tolist()}",
            view=name,
            index=index,
            fix="write K as [[fx, 0, cx], [0, fy, cy], [0, 0, 1]].",
        )
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        what = "scale (pixels per unit)" if view.camera.orthographic else "focal length"
        raise InputError(
            f"{what} must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}",
            view=name,
            index=index,
            fix="check the intrinsics: fx and fy are in pixels and positive.",
        )


BOUNDS_FIX = "check that the camera poses and the bounds use the same world frame and units, or drop the view."


def check_sees_bounds(view: View, index: int, bounds: Bounds, what: str = "the bounds", fix: str = BOUNDS_FIX):
    """:class:`InputError` unless the camera sees ``bounds``: its centre in front of the camera and its 9
    projected points (corners + centre) not all off one side of the image. ``what`` names the box in messages."""
    cam = view.camera
    points = np.vstack([np.asarray(bounds.centre, dtype=np.float64)[None], bounds.corners()])
    uv, z = project(cam, points)
    if z[0] <= 0:
        raise InputError(f"{what}: its centre is behind the camera", view=view.name, index=index, fix=fix)
    if np.all(z > 0):
        lo, hi = uv.min(axis=0), uv.max(axis=0)
        if hi[0] < 0 or hi[1] < 0 or lo[0] > cam.width or lo[1] > cam.height:
            raise InputError(f"{what}: it lies entirely outside the image", view=view.name, index=index, fix=fix)


def _check_mask(view: View, index: int) -> None:
    if view.mask is not None and not np.any(np.asarray(view.mask) > 0.5):
        raise InputError(
            "the mask is empty: no pixel is marked as object (> 0.5)",
            view=view.name,
            index=index,
            fix="check this view's mask (white = object; with mask_source 'color_key' the background colour and "
            "background_tolerance), or remove the view.",
        )


def validate_job(job: Job) -> Job:
    """Check ``job`` (see the module docstring); returns it unchanged or raises :class:`InputError`."""
    if len(job.views) < 2:
        raise InputError(
            f"need at least 2 views, got {len(job.views)}",
            fix="add more posed images of the object (more views give better shape).",
        )
    bounds = job.bounds
    if bounds is not None:
        centre, size = np.asarray(bounds.centre, dtype=np.float64), np.asarray(bounds.size, dtype=np.float64)
        if centre.shape != (3,) or size.shape != (3,) or not (np.all(np.isfinite(centre)) and np.all(size > 0)):
            raise InputError(
                "bounds need a finite centre and a positive size",
                fix='write "bounds": {"centre": [x, y, z], "size": [sx, sy, sz]}.',
            )
    for index, view in enumerate(job.views):
        _check_sizes(view, index)
        _check_camera(view, index)
        if bounds is not None:
            check_sees_bounds(view, index, bounds)
    for index, view in enumerate(job.views):  # content after structure: sizes and cameras are checked first
        _check_mask(view, index)
    return job


def check_output_dir(path) -> Path:
    """Check that ``path`` is (or can be created as) a folder a file can be written to, creating nothing.

    Returns it as a :class:`Path`. The folder itself is made by the writers (``pipeline.write_outputs``), so a
    run that fails before writing leaves no empty folder behind.
    """
    path = Path(path).expanduser()
    fix = "choose an output folder you can write to (and that is not an existing file)."
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    elif existing == path:  # an existing folder: prove it with a probe file (catches read-only mounts)
        try:
            handle, probe = tempfile.mkstemp(prefix=".write_test_", dir=path)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
    if reason:
        raise InputError(f"output folder {path} is not writable ({reason})", fix=fix)
    return path
