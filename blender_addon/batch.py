"""Scripting API for many reconstructions in one Blender session (typically ``blender -b scene.blend --python``).

    from bl_ext.user_default.gtr_reconstruct import batch

    sets = batch.sets_from_collections(bpy.context.scene)   # every collection marked with gtr_reconstruct = True
    reports = batch.reconstruct(sets, glb_folder="//glb")   # one object per set in the scene, plus a GLB each

A :class:`ViewSet` is either views (camera + image, + mask, + frame) or objects to ring with cameras and render
(no photos). Sets run one after another on one backend process; a set that fails is reported and the next one
runs. Options are the scene's panel settings (``scene.gtr``, its Extra Options included) unless given.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import importer, job_writer, jobs, pairing, preferences, render_views
from .backend_client import BackendError

MARK = "gtr_reconstruct"
"""Custom property that marks a collection for :func:`sets_from_collections`."""
IMAGE_FOLDER = "gtr_image_folder"
"""Optional custom property of a marked collection: the folder its cameras' images are paired from."""


@dataclass
class View:
    camera: bpy.types.Object
    image: str
    mask: str = ""
    frame: int = -1
    """-1: the camera's pose at the scene's current frame."""


@dataclass
class ViewSet:
    """One reconstruction: ``views``, or else ``objects`` to ring with cameras and render."""

    name: str
    views: list[View] = field(default_factory=list)
    objects: list[bpy.types.Object] = field(default_factory=list)
    bounds: bpy.types.Object | None = None
    """Optional object whose bounding box holds the subject (rendered sets use the objects' own box)."""


@dataclass
class SetReport:
    name: str
    ok: bool
    message: str
    seconds: float
    object_name: str | None = None
    glb: str | None = None


def sets_from_collections(scene=None) -> list[ViewSet]:
    """A set per collection whose custom property ``gtr_reconstruct`` is true: its cameras paired with their
    images (background image, or a file named like the camera in the collection's ``gtr_image_folder``, else the
    panel's Image Folder), or, when it holds no camera, its other objects rendered from a ring of cameras."""
    scene = scene or bpy.context.scene
    sets = []
    for collection in bpy.data.collections:
        if not collection.get(MARK):
            continue
        objects = sorted(collection.all_objects, key=lambda o: o.name)
        cameras = [o for o in objects if o.type == "CAMERA"]
        if cameras:
            folder = collection.get(IMAGE_FOLDER) or scene.gtr.image_folder or None
            paired = pairing.pair_views(cameras, scene, bpy.path.abspath(folder) if folder else None)
            views = [View(v.camera, v.image, v.mask, v.frame) for v in paired.views]
            views += [View(u.camera, "") for u in paired.unpaired]  # reported by the run, with their reason
            sets.append(ViewSet(collection.name, views=views))
        else:
            sets.append(ViewSet(collection.name, objects=[o for o in objects if o.type not in {"LIGHT", "EMPTY"}]))
    return sets


def reconstruct(
    sets: list[ViewSet],
    *,
    options: dict | None = None,
    glb_folder: str | None = None,
    keep_objects: bool = True,
    scene=None,
    timeout: float | None = None,
) -> list[SetReport]:
    """Run every set; returns one report per set (and prints a summary). ``glb_folder``: also write
    ``<set name>.glb`` there (Blender's ``//`` paths work). ``keep_objects=False`` removes each result object
    after its GLB is written. ``timeout``: seconds per set before it is cancelled."""
    scene = scene or bpy.context.scene
    out = Path(bpy.path.abspath(glb_folder)) if glb_folder else None
    reports = []
    for view_set in sets:
        began = time.perf_counter()
        try:
            report = _run_set(scene, view_set, options, out, keep_objects, timeout)
        except (ValueError, RuntimeError, BackendError, OSError) as err:  # ViewError, CameraError: ValueErrors
            report = SetReport(view_set.name, False, str(err), 0.0)
        report.seconds = round(time.perf_counter() - began, 2)
        reports.append(report)
        print(f"gtr batch: {view_set.name}: {'ok' if report.ok else 'FAILED'}: {report.message}")
    failed = [r.name for r in reports if not r.ok]
    print(
        f"gtr batch: {len(reports) - len(failed)} of {len(reports)} set(s) reconstructed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return reports


def _run_set(scene, view_set: ViewSet, options, out: Path | None, keep_objects: bool, timeout) -> SetReport:
    views, bounds = view_set.views, None
    if view_set.bounds is not None:
        bounds = job_writer.bounds_of(view_set.bounds)
    if not views and view_set.objects:
        views, bounds = _render_set(scene, view_set)
    job = job_writer.prepare(scene, views, bounds=bounds, options=options, object_name=f"{view_set.name} GTR")
    jobs.start(job, preferences.backend_python())
    outcome = jobs.run_until_done(timeout=timeout)
    if outcome is None or outcome.state != "done":
        return SetReport(view_set.name, False, outcome.message if outcome else "no result", 0.0)
    glb = None
    if out is not None and "glb" in outcome.files:
        out.mkdir(parents=True, exist_ok=True)
        glb = str(out / f"{job_writer.safe_name(view_set.name)}.glb")
        shutil.copyfile(outcome.files["glb"], glb)
    name = outcome.object_name
    if not keep_objects:
        importer.remove_object(bpy.data.objects.get(name))
        name = None
    return SetReport(view_set.name, True, outcome.message, 0.0, name, glb)


def _render_set(scene, view_set: ViewSet) -> tuple[list[View], dict]:
    settings = scene.gtr
    depsgraph = bpy.context.evaluated_depsgraph_get()
    centre, size = render_views.selection_bounds(view_set.objects, depsgraph)
    cameras = render_views.ring_cameras(scene, view_set.objects, count=settings.ring_count)
    rendered = render_views.render_views(
        scene,
        cameras,
        job_writer.views_folder(settings, view_set.name),
        resolution=settings.render_size,
        samples=settings.render_samples,
        source=settings.render_source,
    )
    bounds = {"centre": [float(v) for v in centre], "size": [float(v) for v in size]}
    return [View(camera, str(path)) for camera, path in rendered], bounds
