"""Operators: they collect inputs, delegate to the modules that do the work, and report. ``poll()`` only reads."""

from __future__ import annotations

import bpy

from . import job_writer, jobs, pairing, preferences, render_views
from .backend_client import BackendError, BackendProcess


def _settings(context):
    return context.scene.gtr


def _prune_rows(settings) -> None:
    """Drop rows whose camera was deleted."""
    for index in reversed(range(len(settings.views))):
        if settings.views[index].camera is None:
            settings.views.remove(index)
    settings.active_view = min(settings.active_view, max(len(settings.views) - 1, 0))


def _add_rows(settings, pairs) -> int:
    """Add (or update) one row per pair (anything with ``camera``, ``image``, ``mask``, ``frame``); returns how
    many rows were added."""
    added = 0
    for pair in pairs:
        row = next((r for r in settings.views if r.camera == pair.camera and r.frame == pair.frame), None)
        if row is None:
            row = settings.views.add()
            row.camera, row.frame = pair.camera, pair.frame
            added += 1
        if pair.image:
            row.image = pair.image
        if pair.mask:
            row.mask = pair.mask
    return added


class GTR_OT_add_selected_cameras(bpy.types.Operator):
    """Add the selected cameras to the view list and pair each with its image (background image, a file named
    like the camera in the image folder, or an image sequence by frame for one animated camera)"""

    bl_idname = "gtr.add_selected_cameras"
    bl_label = "Add Selected Cameras"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return any(obj.type == "CAMERA" for obj in context.selected_objects)

    def execute(self, context):
        settings = _settings(context)
        cameras = sorted((o for o in context.selected_objects if o.type == "CAMERA"), key=lambda o: o.name)
        folder = bpy.path.abspath(settings.image_folder) if settings.image_folder else None
        result = pairing.pair_views(cameras, context.scene, folder)
        added = _add_rows(settings, result.views)
        for unpaired in result.unpaired:
            self.report({"WARNING"}, unpaired.message)
        self.report({"INFO"}, f"{added} view(s) added, {len(result.unpaired)} camera(s) without an image")
        return {"FINISHED"}


class GTR_OT_remove_view(bpy.types.Operator):
    """Remove the active view from the list"""

    bl_idname = "gtr.remove_view"
    bl_label = "Remove View"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(_settings(context).views) > 0

    def execute(self, context):
        settings = _settings(context)
        settings.views.remove(settings.active_view)
        settings.active_view = min(settings.active_view, max(len(settings.views) - 1, 0))
        return {"FINISHED"}


class GTR_OT_clear_views(bpy.types.Operator):
    """Remove every view from the list (the cameras stay in the scene)"""

    bl_idname = "gtr.clear_views"
    bl_label = "Clear Views"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(_settings(context).views) > 0

    def execute(self, context):
        _settings(context).views.clear()
        return {"FINISHED"}


def _add_cameras(settings, cameras) -> None:
    _add_rows(settings, [pairing.PairedView(camera, "", "", -1, "ring") for camera in cameras])


def _meshable(context) -> list:
    return [obj for obj in context.selected_objects if obj.type not in {"CAMERA", "LIGHT", "SPEAKER", "EMPTY"}]


class GTR_OT_ring_cameras(bpy.types.Operator):
    """Place a ring of cameras around the selected objects and add them to the view list (images come from
    Render Views)"""

    bl_idname = "gtr.ring_cameras"
    bl_label = "Ring Cameras Around Selection"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(_meshable(context))

    def execute(self, context):
        settings = _settings(context)
        try:
            cameras = render_views.ring_cameras(context.scene, _meshable(context), count=settings.ring_count)
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        _prune_rows(settings)
        _add_cameras(settings, cameras)
        self.report({"INFO"}, f"{len(cameras)} cameras placed; Render Views gives them images")
        return {"FINISHED"}


def render_rows(context, rows, folder) -> None:
    """Render every row's camera with Cycles into ``folder`` and set the rows' images (blocking, with the
    window manager's progress indicator)."""
    settings = _settings(context)
    wm = context.window_manager
    wm.progress_begin(0, len(rows))
    try:
        rendered = render_views.render_views(
            context.scene,
            [row.camera for row in rows],
            folder,
            resolution=settings.render_size,
            samples=settings.render_samples,
            source=settings.render_source,
            progress=lambda i, n: wm.progress_update(i),
        )
    finally:
        wm.progress_end()
    for row, (_camera, path) in zip(rows, rendered):
        row.image, row.mask, row.frame = str(path), "", -1


class GTR_OT_render_views(bpy.types.Operator):
    """Render every camera of the view list with Cycles (transparent film) into the job folder and pair the
    renders with the cameras (views posed at an explicit frame keep their images)"""

    bl_idname = "gtr.render_views"
    bl_label = "Render Views"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return not jobs.busy() and any(row.camera for row in _settings(context).views)

    def execute(self, context):
        settings = _settings(context)
        _prune_rows(settings)
        rows = [row for row in settings.views if row.frame < 0]  # rows posed at other frames keep their images
        if not rows:
            self.report({"ERROR"}, "every view is posed at an explicit frame: Render Views renders the current one")
            return {"CANCELLED"}
        folder = job_writer.views_folder(settings, context.scene.name)
        try:
            render_rows(context, rows, folder)
        except (RuntimeError, ValueError) as err:
            self.report({"ERROR"}, f"rendering failed: {err}")
            return {"CANCELLED"}
        kept = len(settings.views) - len(rows)
        self.report(
            {"INFO"}, f"{len(rows)} views rendered into {folder}" + (f"; {kept} at other frames kept" if kept else "")
        )
        return {"FINISHED"}


def start_job(operator, context, job: jobs.Job) -> set[str]:
    """Send a prepared job to the backend; in background mode wait for it and report how it ended."""
    try:
        jobs.start(job, preferences.backend_python(context))
    except BackendError as err:
        _settings(context).status, _settings(context).status_is_error = str(err), True
        operator.report({"ERROR"}, str(err))
        return {"CANCELLED"}
    if not bpy.app.background:
        jobs.ensure_timer()
        operator.report({"INFO"}, "reconstruction started")
        return {"FINISHED"}
    outcome = jobs.run_until_done()
    if outcome is None or outcome.state != "done":
        operator.report({"ERROR"}, outcome.message if outcome else "the job ended without a result")
        return {"CANCELLED"}
    operator.report({"INFO"}, outcome.message)
    return {"FINISHED"}


class GTR_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a textured mesh from the views in the list; it appears where the object was.
    In the app this runs in the background (progress in the panel, Cancel to stop); in background mode
    (blender -b) it waits until the result is in the scene"""

    bl_idname = "gtr.reconstruct"
    bl_label = "Reconstruct"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and not jobs.busy() and len(context.scene.gtr.views) > 0

    def execute(self, context):
        settings = _settings(context)
        try:
            job = job_writer.prepare(context.scene)
        except job_writer.ViewError as err:
            settings.status, settings.status_is_error = str(err), True
            if err.row is not None:
                settings.active_view = err.row
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return start_job(self, context, job)


class GTR_OT_reconstruct_selected(bpy.types.Operator):
    """One click: ring cameras around the selected objects, render them, and reconstruct a light textured mesh
    (no photos needed). The view list is replaced by the ring"""

    bl_idname = "gtr.reconstruct_selected"
    bl_label = "Reconstruct Selected Object"

    @classmethod
    def poll(cls, context):
        return not jobs.busy() and bool(_meshable(context))

    def execute(self, context):
        settings = _settings(context)
        targets = _meshable(context)
        try:
            centre, size = render_views.selection_bounds(targets, context.evaluated_depsgraph_get())
            cameras = render_views.ring_cameras(context.scene, targets, count=settings.ring_count)
            settings.views.clear()
            _add_cameras(settings, cameras)
            render_rows(context, list(settings.views), job_writer.views_folder(settings, targets[0].name))
            bounds = {"centre": [float(v) for v in centre], "size": [float(v) for v in size]}
            job = job_writer.prepare(context.scene, bounds=bounds, object_name=f"{targets[0].name} GTR")
        except (RuntimeError, ValueError) as err:  # ViewError and CameraError are ValueErrors
            settings.status, settings.status_is_error = str(err), True
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return start_job(self, context, job)


class GTR_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction (nothing is added to the scene)"""

    bl_idname = "gtr.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return jobs.busy()

    def execute(self, context):
        jobs.cancel()
        return {"FINISHED"}


class GTR_OT_release_backend(bpy.types.Operator):
    """Stop the backend process to free its memory (a running job is cancelled; the next job starts it again)"""

    bl_idname = "gtr.release_backend"
    bl_label = "Release Backend"

    def execute(self, context):
        jobs.release_backend()
        self.report({"INFO"}, "backend released")
        return {"FINISHED"}


class GTR_OT_test_backend(bpy.types.Operator):
    """Start the backend with the interpreter in the preferences, run the handshake and show its answer"""

    bl_idname = "gtr.test_backend"
    bl_label = "Test Backend"

    def execute(self, context):
        prefs = preferences.addon_preferences(context)
        try:
            backend = BackendProcess(preferences.backend_python(context)).start()
            try:
                ready = backend.handshake()
            finally:
                backend.stop()
        except BackendError as err:
            text = f"Failed: {err}"
            self.report({"ERROR"}, text)
        else:
            text = (
                f"OK: backend {ready['backend_version']} (protocol {ready['protocol']}), device {ready['device']}, "
                f"torch {ready['torch']}, nvdiffrast {'yes' if ready['nvdiffrast'] else 'no'}"
            )
            self.report({"INFO"}, text)
        if prefs is not None:
            prefs.test_result = text
        return {"FINISHED"}


classes = (
    GTR_OT_add_selected_cameras,
    GTR_OT_remove_view,
    GTR_OT_clear_views,
    GTR_OT_ring_cameras,
    GTR_OT_render_views,
    GTR_OT_reconstruct,
    GTR_OT_reconstruct_selected,
    GTR_OT_cancel,
    GTR_OT_release_backend,
    GTR_OT_test_backend,
)
