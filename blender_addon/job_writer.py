"""Views + options → a job folder the backend runs (``job.json``; the images stay where they are).

Everything is checked here, before anything is sent: a problem raises :class:`ViewError` naming the row of the
view list ("view 3 (Camera.002): …") and what to do. The job's camera convention and file format are the
backend's (``backend/inputs/job_file.py``); the camera maths is :mod:`.cameras`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import bpy
from mathutils import Vector

from . import jobs, scene_cameras
from .cameras import CameraError

JOB_FILE = "job.json"


class ViewError(ValueError):
    """A view (or the view list, ``row`` None) that cannot be sent; the message names the row and the fix."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def work_root(settings) -> Path:
    """Where job folders and rendered views go: the settings' job folder, else a folder in the system's temp."""
    if settings.work_folder:
        return Path(bpy.path.abspath(settings.work_folder))
    return Path(tempfile.gettempdir()) / "gtr_reconstruct"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "scene"


def views_folder(settings, name: str) -> Path:
    """The folder rendered views of ``name`` go to (re-rendering replaces its files)."""
    return work_root(settings) / "views" / safe_name(name)


def options_from_settings(settings) -> dict:
    """The job's backend options from the panel (keys of the backend's option registry)."""
    options = {"preset": settings.preset, "texture": settings.texture, "device": settings.device}
    options["method"] = settings.method.lower()
    if settings.texture == "uv":
        options["texture_size"] = settings.texture_size
    if settings.face_budget > 0:
        options["faces"] = settings.face_budget
    if settings.checkpoint and settings.method != "FIT":
        options["checkpoint"] = bpy.path.abspath(settings.checkpoint)
    if settings.extra_options.strip():
        try:
            extra = json.loads(settings.extra_options)
        except ValueError as err:
            raise ViewError(f'Extra Options is not valid JSON ({err}): write e.g. {{"fit_steps": 600}}.') from None
        if not isinstance(extra, dict):
            raise ViewError('Extra Options must be a JSON object, e.g. {"fit_steps": 600}.')
        options.update(extra)
    return options


def _row_label(row: int, view) -> str:
    camera = view.camera.name if view.camera is not None else "no camera"
    return f"view {row + 1} ({camera})"


def check_views(views) -> None:
    """What can be checked without reading cameras: count, cameras set, image and mask files present."""
    if len(views) < 2:
        raise ViewError(
            f"{len(views)} view(s) in the list: a reconstruction needs at least 2 (8 or more work well). Add cameras "
            "with their images, or ring cameras around an object and render them."
        )
    for row, view in enumerate(views):
        label = _row_label(row, view)
        if view.camera is None:
            raise ViewError(f"{label}: no camera set. Pick a camera or remove the row.", row)
        if not view.image:
            raise ViewError(f"{label}: no image. Pick the image this camera saw, or Render Views.", row)
        image = Path(bpy.path.abspath(view.image))
        if not image.is_file():
            raise ViewError(f"{label}: image file not found: {image}.", row)
        if view.mask and not Path(bpy.path.abspath(view.mask)).is_file():
            raise ViewError(f"{label}: mask file not found: {bpy.path.abspath(view.mask)}.", row)


def bounds_of(obj) -> dict:
    """The world-space axis-aligned box of an object's bounding box, as job.json ``bounds``."""
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    low = [min(c[i] for c in corners) for i in range(3)]
    high = [max(c[i] for c in corners) for i in range(3)]
    if any(h - lo <= 0 for lo, h in zip(low, high)):
        raise ViewError(f"the bounds object '{obj.name}' has no volume: use a box-shaped object around the subject.")
    return {"min": low, "max": high}


def prepare(
    scene,
    views=None,
    *,
    bounds: dict | None = None,
    options: dict | None = None,
    object_name: str | None = None,
    formats: tuple[str, ...] = ("npz", "glb"),
    on_finish=None,
) -> jobs.Job:
    """Check the views and write a job folder; returns the job to start.

    ``views``: objects with ``camera``, ``image``, ``mask``, ``frame`` (default: the scene's view list).
    ``bounds``: a job.json bounds dict (default: the settings' bounds object, else none: the backend takes them
    from the masks, or from where the cameras look).
    ``options``: backend options (default: the panel's).
    """
    settings = scene.gtr
    views = list(settings.views if views is None else views)
    check_views(views)
    try:
        entries = scene_cameras.job_views(scene, views)
    except CameraError as err:
        raise ViewError(str(err), err.row) from None
    if bounds is None and settings.bounds is not None:
        bounds = bounds_of(settings.bounds)
    job_id = jobs.new_job_id()
    job_dir = work_root(settings) / f"job_{time.strftime('%Y%m%d_%H%M%S')}_{job_id}"
    options = options_from_settings(settings) if options is None else options
    document = {"version": 1, "views": entries, "options": options}
    if bounds is not None:
        document["bounds"] = bounds
    try:
        job_dir.mkdir(parents=True)
        (job_dir / JOB_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")
    except OSError as err:
        raise ViewError(f"cannot write the job folder {job_dir} ({err}): set a writable Job Folder.") from None
    return jobs.Job(
        job_id=job_id,
        job_dir=job_dir,
        scene_name=scene.name,
        object_name=object_name or _default_name(settings, views),
        formats=formats,
        on_finish=on_finish,
    )


def _default_name(settings, views) -> str:
    if settings.bounds is not None:
        return f"{settings.bounds.name} GTR"
    return "GTR Reconstruction"
