"""The Blender scene of one dataset object: emptied, lit, imported, normalised into the unit box, rendered.

Everything here mutates ``bpy`` data and runs on the main thread. Lighting is fixed in the world (so every view of
an object sees the same shading): a uniform white world plus one soft sun from the upper front-left.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector

from ..render_views import plain_rgba_png_output
from .rig import RenderSettings, View
from .surface import Surface, gather_surface

IMPORTERS = {
    ".obj": "wm.obj_import",
    ".ply": "wm.ply_import",
    ".stl": "wm.stl_import",
    ".glb": "import_scene.gltf",
    ".gltf": "import_scene.gltf",
}
"""Mesh file suffix → the Blender operator importing it (each converts its file's axes to Blender's Z up)."""

WORLD_STRENGTH = 0.6
"""Radiance of the uniform white world: a white diffuse surface seeing the whole sky is 0.6 before the sun."""
SUN_STRENGTH = 1.5
"""Sun irradiance (W/m²): adds up to 1.5/π ≈ 0.48 to a white diffuse surface facing it."""
SUN_DIRECTION = (-0.45, -0.35, 0.82)
"""Towards the sun from the object (normalised when used): above, in front (−Y) and to the left (−X)."""


class MeshProblem(Exception):
    """An object cannot be made into a dataset object (unreadable file, no geometry, degenerate bounds, missing
    texture); the message says why. The run skips the object and goes on."""


def empty_scene() -> bpy.types.Scene:
    """The home file with no objects (preferences and enabled add-ons stay); all previous data is gone."""
    with quiet_stdout():
        bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def import_mesh(path: Path) -> None:
    """Import the mesh file ``path`` into the current scene; raises :class:`MeshProblem` when the importer fails or
    a texture it names is missing (Cycles would paint it magenta)."""
    operator = IMPORTERS.get(path.suffix.lower())
    if operator is None:
        raise MeshProblem(f"unsupported file type {path.suffix!r} (supported: {', '.join(sorted(IMPORTERS))})")
    group, name = operator.split(".")
    images_before = set(bpy.data.images)
    try:
        with quiet_stdout():
            result = getattr(getattr(bpy.ops, group), name)(filepath=str(path))
    except Exception as error:  # importers are add-on code: any exception means this file cannot be read
        message = " ".join(str(error).replace("Error: ", "").split())
        raise MeshProblem(f"cannot import {path.name}: {type(error).__name__}: {message}") from None
    if "FINISHED" not in result:
        raise MeshProblem(f"cannot import {path.name}: the importer returned {sorted(result)}")
    for image in set(bpy.data.images) - images_before:
        if image.source == "FILE" and image.packed_file is None:
            file = Path(bpy.path.abspath(image.filepath, library=image.library))
            if not file.is_file():
                raise MeshProblem(f"{path.name} uses the texture {image.filepath!r}, which is missing ({file})")


def normalise(scene: bpy.types.Scene) -> Surface:
    """Move and scale the scene's objects so the box around their rendered geometry is centred at the origin with
    its largest side 1; returns the normalised surface. Raises :class:`MeshProblem` when there is no geometry or
    its box is degenerate. Imported cameras and lights are hidden from the render; the top-level objects keep the
    pose of the current frame and lose their animation."""
    for obj in scene.objects:
        if obj.type in {"CAMERA", "LIGHT", "LIGHT_PROBE", "SPEAKER"}:
            obj.hide_render = True
    view_layer = scene.view_layers[0]
    surface = gather_surface(_depsgraph(scene, view_layer))
    if len(surface.triangles) == 0:
        raise MeshProblem("no geometry: the file holds no faces (points or lines only, or nothing)")
    if not np.isfinite(surface.vertices).all():
        raise MeshProblem("the geometry has non-finite vertex coordinates")
    low, high = surface.bounds
    largest = float((high - low).max())
    if not largest > 1e-12:
        raise MeshProblem(f"degenerate bounds: the geometry spans {largest:g} units (all vertices coincide)")
    scale, centre = 1.0 / largest, (low + high) / 2.0
    transform = Matrix.Diagonal((scale, scale, scale, 1.0)) @ Matrix.Translation(-centre)
    for obj in scene.objects:
        if obj.parent is None:
            obj.animation_data_clear()  # an imported animation would put the object back on re-evaluation
            obj.matrix_world = transform @ obj.matrix_world
    surface = gather_surface(_depsgraph(scene, view_layer))
    low, high = surface.bounds
    if abs(float((high - low).max()) - 1.0) > 1e-4 or np.abs(low + high).max() > 1e-4:
        raise MeshProblem(
            "the geometry did not follow its objects into the unit box (constraints or drivers move it?): "
            f"box {low.round(4).tolist()} … {high.round(4).tolist()}"
        )
    return surface


def _depsgraph(scene, view_layer):
    depsgraph = view_layer.depsgraph
    depsgraph.update()
    return depsgraph


def light_and_camera(scene: bpy.types.Scene) -> bpy.types.Object:
    """Add the fixed lighting and the camera the views are rendered with; returns the camera."""
    world = bpy.data.worlds.new("dataset white")
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    background.inputs["Strength"].default_value = WORLD_STRENGTH
    scene.world = world

    sun = bpy.data.objects.new("dataset sun", bpy.data.lights.new("dataset sun", "SUN"))
    sun.data.energy = SUN_STRENGTH
    sun.data.angle = math.radians(10.0)
    sun.rotation_euler = (-Vector(SUN_DIRECTION).normalized()).to_track_quat("-Z", "Y").to_euler()  # shines along −Z
    scene.collection.objects.link(sun)

    data = bpy.data.cameras.new("dataset camera")
    data.sensor_fit = "HORIZONTAL"
    data.clip_start, data.clip_end = 0.01, 100.0
    camera = bpy.data.objects.new("dataset camera", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def configure_render(scene: bpy.types.Scene, settings: RenderSettings, device: str, threads: int) -> str:
    """Cycles settings for the dataset's images; returns what renders them ("CPU" or e.g. "GPU (OPTIX: H200)")."""
    render = scene.render
    render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.samples = settings.samples
    cycles.use_adaptive_sampling = False  # the same samples everywhere: the same noise level on every object
    cycles.use_denoising = False
    cycles.time_limit = 0.0
    cycles.seed = 0
    cycles.max_bounces, cycles.diffuse_bounces, cycles.glossy_bounces = 8, 3, 3
    cycles.transmission_bounces, cycles.transparent_max_bounces, cycles.volume_bounces = 6, 8, 0
    used = "CPU"
    cycles.device = "CPU"
    if device == "GPU":
        used = _use_gpu(scene) or "CPU (no Cycles GPU device found)"
    render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        render.threads = threads
    render.resolution_x = render.resolution_y = settings.size
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    plain_rgba_png_output(scene)
    return used


def _use_gpu(scene: bpy.types.Scene) -> str | None:
    """Switch Cycles to the first GPU backend with a device; returns e.g. "GPU (CUDA: name)" or None."""
    preferences = bpy.context.preferences.addons["cycles"].preferences
    for backend in ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI"):
        try:
            preferences.compute_device_type = backend
        except TypeError:  # not built into this Blender
            continue
        with quiet_stdout():
            preferences.refresh_devices()
        devices = [d for d in preferences.devices if d.type == backend]
        if devices:
            for d in preferences.devices:
                d.use = d.type == backend
            scene.cycles.device = "GPU"
            return f"GPU ({backend}: {', '.join(d.name for d in devices)})"
    preferences.compute_device_type = "NONE"
    return None


def render_view(scene: bpy.types.Scene, camera: bpy.types.Object, view: View, path: Path) -> None:
    """Render ``view`` with Cycles into the RGBA PNG ``path``, atomically (rendered to a scratch folder whose path
    Blender cannot mistake for a frame-number pattern, then moved beside ``path`` and renamed)."""
    camera.data.angle = view.fov
    camera.matrix_world = Matrix(view.matrix)
    scratch = Path(tempfile.mkdtemp(prefix="gtr-render-dataset-"))
    try:
        scene.render.filepath = str(scratch / "view.png")
        with quiet_stdout():
            bpy.ops.render.render(write_still=True, scene=scene.name)
        written = scratch / "view.png"
        if not written.is_file():
            raise RuntimeError(f"Cycles wrote no image (expected {written})")
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.move(written, temporary)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_QUIET = {"enabled": True}


def set_quiet(enabled: bool) -> None:
    """Whether :func:`quiet_stdout` silences Blender's own printing (importer and render logs)."""
    _QUIET["enabled"] = enabled


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Blender's C code prints render and import logs to file descriptor 1: send them to /dev/null meanwhile
    (stderr stays, so Blender's errors still show)."""
    if not _QUIET["enabled"]:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
