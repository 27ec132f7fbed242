"""Views of scene objects with no photos: a ring of cameras around a selection, rendered with Cycles on the CPU.

Three functions, called by the add-on's operators (which collect the inputs and report):

- :func:`selection_bounds` — the world-space axis-aligned box of the objects' evaluated geometry;
- :func:`ring_cameras` — camera objects on rings around that box, each looking at its centre, in a collection of
  their own that a later ring for the same objects replaces;
- :func:`render_views` — one RGBA PNG per camera (transparent film), named after the camera, either the lit image
  or the Diffuse Color pass (plain albedo), with every scene setting it changes restored afterwards.

World axes are Blender's (+Z up). Angles are in degrees. Everything here runs on the main thread.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import bpy
from mathutils import Vector

GEOMETRY_TYPES = frozenset(
    {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL"}
)
"""Object types whose evaluated data has a bounding box worth framing (lights, cameras, empties have none)."""

SOURCES = ("LIT", "ALBEDO")
"""What :func:`render_views` writes: the lit image (Combined pass) or the Diffuse Color pass with Combined alpha."""

CAMERA_PREFIX = "GTR_cam_"


class Bounds(NamedTuple):
    """A world-space axis-aligned box: ``centre`` and ``size`` (full edge lengths, not half), both ``Vector``."""

    centre: Vector
    size: Vector


class RenderCancelled(Exception):
    """:func:`render_views` stopped because ``cancel()`` returned True; ``rendered`` holds the views already written
    as ``(camera, path)`` pairs."""

    def __init__(self, rendered: list[tuple[bpy.types.Object, Path]], total: int):
        super().__init__(f"rendering cancelled after {len(rendered)} of {total} views")
        self.rendered = rendered


def selection_bounds(objects: Iterable[bpy.types.Object], depsgraph: bpy.types.Depsgraph) -> Bounds:
    """The axis-aligned world box around the evaluated geometry of ``objects``.

    Covered: every instance the depsgraph evaluates for these objects — the object's own evaluated data (meshes
    after modifiers, curves, text, surfaces, metaballs, point clouds, hair curves, Grease Pencil, volumes through
    their grids' bound box) plus what it instances (geometry-nodes instances, particle or vertex instancing, an
    empty instancing a collection). Each piece contributes its local ``bound_box`` corners × its world matrix, so
    the box is tight per piece and conservative under rotation. Pieces with no extent (an empty mesh, a
    geometry-nodes object whose output is only instances) add nothing.

    Raises ``ValueError`` when none of the objects has geometry.
    """
    wanted = {obj.original for obj in objects}
    if not wanted:
        raise ValueError("no objects given: select the object(s) to frame first")
    low = Vector((math.inf,) * 3)
    high = Vector((-math.inf,) * 3)
    for instance in depsgraph.object_instances:
        owner = instance.parent.original if instance.is_instance else instance.object.original
        if owner not in wanted or instance.object.type not in GEOMETRY_TYPES:
            continue
        matrix = instance.matrix_world.copy()  # the instance iterator's data is only valid during this step
        corners = [matrix @ Vector(corner) for corner in instance.object.bound_box]
        if all((corner - corners[0]).length == 0.0 for corner in corners):
            continue
        for corner in corners:
            low = Vector(map(min, low, corner))
            high = Vector(map(max, high, corner))
    if not math.isfinite(low.x):
        names = ", ".join(sorted(obj.name for obj in wanted))
        raise ValueError(
            f"none of the selected objects has geometry to frame ({names}): select a mesh, curve, text, volume, "
            "point cloud or geometry-nodes object that shows something in the viewport"
        )
    return Bounds(centre=(low + high) / 2.0, size=high - low)


def ring_cameras(
    scene: bpy.types.Scene,
    targets: Sequence[bpy.types.Object],
    count: int = 12,
    elevations: Sequence[float] = (30.0, -10.0),
    lens: float = 50.0,
    sensor_width: float = 36.0,
    margin: float = 0.1,
    distance: float | None = None,
    collection_name: str | None = None,
    depsgraph: bpy.types.Depsgraph | None = None,
) -> list[bpy.types.Object]:
    """New camera objects evenly spread on rings around ``targets``, each looking at their bounds' centre.

    Layout: ``count`` cameras split over the rings at ``elevations`` (degrees above the horizontal plane through
    the centre; earlier rings take the remainder), evenly spaced in azimuth, each ring turned by half a step
    against the previous one so the rings interleave. Azimuth 0 is the front view (camera on the −Y side looking
    +Y), then counter-clockwise seen from above. The defaults — 12 cameras, 6 at +30° and 6 at −10° — see the
    top, every side and a little of the underside, which is what reconstruction needs.

    Lens: ``lens`` mm on a ``sensor_width`` mm sensor, sensor fit AUTO (the sensor spans the longer side of the
    scene's frame); the defaults are a normal 50 mm / 36 mm lens (40° across the longer side). Distance: the
    same for every camera, the smallest at which all 8 corners of the bounds project inside every camera's frame
    (the scene's resolution and pixel aspect) shrunk by ``1 + margin``; or ``distance`` when given. Rotation is set
    directly (no constraints); clipping is set from the distance so small and large objects both render.

    The cameras (``GTR_cam_000`` …, in ring order) go into the collection ``collection_name`` (default
    ``"GTR Views <name>"``, the alphabetically first target's name), linked to the scene; the cameras a previous
    call left in that collection are deleted first, so re-running replaces the ring. ``depsgraph`` defaults to the
    context's evaluated one.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not elevations:
        raise ValueError("elevations is empty: give at least one ring elevation in degrees, e.g. (30.0, -10.0)")
    if any(not -90.0 < elevation < 90.0 for elevation in elevations):
        raise ValueError(f"ring elevations must lie strictly between -90 and 90 degrees, got {tuple(elevations)}")
    if not targets:
        raise ValueError("no target objects: select the object(s) to put cameras around")
    bounds = selection_bounds(targets, depsgraph or bpy.context.evaluated_depsgraph_get())
    directions = _ring_directions(count, elevations)
    tan_x, tan_y = _half_view_tangents(scene, lens, sensor_width)
    if distance is None:
        distance = _fitting_distance(bounds, directions, tan_x / (1.0 + margin), tan_y / (1.0 + margin))
    elif distance <= 0:
        raise ValueError(f"distance must be positive, got {distance}")

    collection = _fresh_collection(scene, collection_name or f"GTR Views {sorted(t.name for t in targets)[0]}")
    radius = bounds.size.length / 2.0
    digits = max(3, len(str(count - 1)))
    cameras = []
    for index, forward in enumerate(directions):
        name = f"{CAMERA_PREFIX}{index:0{digits}d}"
        data = bpy.data.cameras.new(name)
        data.lens, data.sensor_width, data.sensor_fit = lens, sensor_width, "AUTO"
        data.clip_start = max((distance - radius) * 0.5, distance * 1e-4)
        data.clip_end = (distance + radius) * 2.0
        camera = bpy.data.objects.new(name, data)
        camera.location = bounds.centre - distance * forward
        camera.rotation_euler = forward.to_track_quat("-Z", "Y").to_euler()
        collection.objects.link(camera)
        cameras.append(camera)
    return cameras


def _ring_directions(count: int, elevations: Sequence[float]) -> list[Vector]:
    """Unit viewing directions (camera → centre), ring by ring, ``count`` in all."""
    per_ring = [count // len(elevations) + (ring < count % len(elevations)) for ring in range(len(elevations))]
    directions = []
    for ring, (elevation, n) in enumerate(zip(elevations, per_ring)):
        for k in range(n):
            azimuth = 2.0 * math.pi * (k + 0.5 * (ring % 2)) / n
            el = math.radians(elevation)
            # camera position relative to the centre, then reversed: the direction it looks in
            offset = Vector((math.sin(azimuth) * math.cos(el), -math.cos(azimuth) * math.cos(el), math.sin(el)))
            directions.append(-offset)
    return directions


def _half_view_tangents(scene: bpy.types.Scene, lens: float, sensor_width: float) -> tuple[float, float]:
    """tan(half the field of view) across the frame's width and height for an AUTO-fit camera in ``scene``."""
    render = scene.render
    width = render.resolution_x * render.pixel_aspect_x
    height = render.resolution_y * render.pixel_aspect_y
    long_side = sensor_width / 2.0 / lens
    if width >= height:
        return long_side, long_side * height / width
    return long_side * width / height, long_side


def _fitting_distance(bounds: Bounds, directions: Sequence[Vector], tan_x: float, tan_y: float) -> float:
    """The smallest distance from the centre at which every corner of ``bounds`` projects within ``±tan_x``,
    ``±tan_y`` of every camera's optical axis (a corner at lateral offset ``a`` and depth ``q·f + d`` needs
    ``d ≥ |a| / tan − q·f``)."""
    half = bounds.size / 2.0
    corners = [Vector((sx * half.x, sy * half.y, sz * half.z)) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    needed = 0.0
    for forward in directions:
        rotation = forward.to_track_quat("-Z", "Y")
        right, up = rotation @ Vector((1.0, 0.0, 0.0)), rotation @ Vector((0.0, 1.0, 0.0))
        for q in corners:
            needed = max(needed, abs(q.dot(right)) / tan_x - q.dot(forward), abs(q.dot(up)) / tan_y - q.dot(forward))
    return max(needed, 1e-6)


def _fresh_collection(scene: bpy.types.Scene, name: str) -> bpy.types.Collection:
    """The collection ``name`` linked to ``scene`` with the cameras it held deleted (created when missing)."""
    collection = bpy.data.collections.get(name)
    if collection is None:
        collection = bpy.data.collections.new(name)
    for obj in [obj for obj in collection.objects if obj.type == "CAMERA"]:
        data = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if data.users == 0:
            bpy.data.cameras.remove(data)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def render_views(
    scene: bpy.types.Scene,
    cameras: Sequence[bpy.types.Object],
    out_dir: str | Path,
    resolution: int = 256,
    samples: int = 16,
    source: str = "LIT",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    denoise: bool = False,
) -> list[tuple[bpy.types.Object, Path]]:
    """Render each camera with Cycles on the CPU into ``out_dir/<camera name>.png``; returns ``(camera, path)``
    pairs in the order given.

    Images: 8-bit RGBA PNG, straight alpha from a transparent film, background alpha 0, "Standard" view transform
    (pixel values are the plain sRGB encoding of the scene-linear colours; Filmic/AgX would change them), no
    dither, stamp, motion blur, border, stereo, compositor or sequencer. ``resolution`` is the longer side in
    pixels; the other side keeps the scene's output aspect, so the scene's camera intrinsics apply to the images
    scaled by ``resolution / longer side``. The scene's current frame and the view layer active in the context are
    rendered. ``samples`` per pixel, OpenImageDenoise only with ``denoise`` (2 s more per 256² view on 2 cores).

    ``source``: ``"LIT"`` — the Combined pass, as lit in the scene; ``"ALBEDO"`` — the Diffuse Color pass as RGB
    with the Combined pass's alpha (composited by a temporary compositor node group), so a texture baked from it
    is plain albedo that relights correctly. For a Principled BSDF it is the base colour times
    ``(1 − metallic)(1 − transmission)`` times what the specular layer leaves to the diffuse one (about 0.96 seen
    head-on at IOR 1.5, less at grazing angles).

    ``progress(done, total)`` is called after each view; ``cancel()`` is asked before each view and, when it
    returns True, :class:`RenderCancelled` is raised (the views written so far stay on disk). Every scene setting
    changed here is restored afterwards, also when a render fails or is cancelled; a file of the same name left in
    ``out_dir`` by an earlier run is replaced.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if resolution < 4:
        raise ValueError(f"resolution must be at least 4 pixels, got {resolution}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    not_cameras = [obj.name for obj in cameras if obj.type != "CAMERA"]
    if not_cameras:
        raise ValueError(f"these objects are not cameras: {', '.join(not_cameras)}")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{_file_stem(camera.name)}.png" for camera in cameras]
    if len(set(paths)) != len(paths):
        raise ValueError("two cameras map to the same file name; rename them so their names differ in letters/digits")

    view_layer = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
    saved = _SavedSettings(scene, view_layer)
    compositor = None
    scratch = Path(tempfile.mkdtemp(prefix="gtr-render-"))  # a path with no '#' or '{…}' for Blender to expand
    rendered: list[tuple[bpy.types.Object, Path]] = []
    try:
        _apply_render_settings(scene, resolution, samples, denoise)
        if source == "ALBEDO":
            view_layer.use_pass_diffuse_color = True  # before the Render Layers node: it shows enabled passes only
            compositor = _albedo_compositor(scene, view_layer)
            scene.render.use_compositing = True
            scene.compositing_node_group = compositor
        for index, (camera, path) in enumerate(zip(cameras, paths)):
            if cancel is not None and cancel():
                raise RenderCancelled(rendered, len(cameras))
            _render_one(scene, view_layer, camera, scratch / f"view_{index:05d}.png", path)
            rendered.append((camera, path))
            if progress is not None:
                progress(index + 1, len(cameras))
    finally:
        saved.restore()
        if compositor is not None:
            bpy.data.node_groups.remove(compositor)
        shutil.rmtree(scratch, ignore_errors=True)
    return rendered


def _file_stem(name: str) -> str:
    """``name`` with the characters file systems refuse replaced by ``_``."""
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name)


def _render_one(scene, view_layer, camera, scratch_path: Path, path: Path) -> None:
    scene.camera = camera
    scene.render.filepath = str(scratch_path)
    path.unlink(missing_ok=True)
    bpy.ops.render.render(write_still=True, scene=scene.name, layer=view_layer.name)
    if not scratch_path.is_file():
        raise RuntimeError(f"rendering camera {camera.name!r} wrote no image (expected {scratch_path})")
    shutil.move(scratch_path, path)


def _apply_render_settings(scene: bpy.types.Scene, resolution: int, samples: int, denoise: bool) -> None:
    render = scene.render
    width = render.resolution_x * render.resolution_percentage / 100.0
    height = render.resolution_y * render.resolution_percentage / 100.0
    scale = resolution / max(width, height)
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.time_limit = 0.0
    scene.cycles.use_denoising = denoise
    render.resolution_x = max(1, round(width * scale))
    render.resolution_y = max(1, round(height * scale))
    render.resolution_percentage = 100
    render.use_single_layer = True
    render.use_multiview = False
    plain_rgba_png_output(scene)


def plain_rgba_png_output(scene: bpy.types.Scene) -> None:
    """Renders written as they are: 8-bit RGBA PNG on a transparent film, the "Standard" sRGB view transform, and
    no compositing, sequencer, border, stamp, motion blur or dither (the dataset renderer uses it too)."""
    render, image = scene.render, scene.render.image_settings
    render.film_transparent = True
    render.use_persistent_data = True  # keeps the BVH between views: 2.2× faster per view on a 1M-face mesh
    render.use_compositing = False
    render.use_sequencer = False
    render.use_border = False
    render.use_stamp = False
    render.use_motion_blur = False
    render.dither_intensity = 0.0
    render.use_file_extension = True
    image.media_type = "IMAGE"
    image.file_format = "PNG"
    image.color_mode = "RGBA"
    image.color_depth = "8"
    image.compression = 15
    image.color_management = "FOLLOW_SCENE"
    scene.display_settings.display_device = "sRGB"
    view = scene.view_settings
    view.view_transform = "Standard"
    view.look = "None"
    view.exposure = 0.0
    view.gamma = 1.0
    view.use_curve_mapping = False
    view.use_white_balance = False


def _albedo_compositor(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> bpy.types.NodeTree:
    """A temporary compositor node group: Diffuse Color pass → Set Alpha (replace) ← Combined alpha → output."""
    tree = bpy.data.node_groups.new("GTR albedo (temporary)", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer.name
    set_alpha = tree.nodes.new("CompositorNodeSetAlpha")
    set_alpha.inputs["Type"].default_value = "Replace Alpha"
    output = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Diffuse Color"], set_alpha.inputs["Image"])
    tree.links.new(layers.outputs["Alpha"], set_alpha.inputs["Alpha"])
    tree.links.new(set_alpha.outputs["Image"], output.inputs["Image"])
    return tree


class _SavedSettings:
    """The values of every setting :func:`render_views` may change, restored in the order they were read."""

    def __init__(self, scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer):
        render = scene.render
        # fmt: off
        owned = [
            (scene, ("camera", "compositing_node_group")),
            (render, (
                "engine", "resolution_x", "resolution_y", "resolution_percentage", "film_transparent",
                "use_single_layer", "use_persistent_data", "use_compositing", "use_sequencer", "use_border",
                "use_multiview", "use_stamp", "use_motion_blur", "dither_intensity", "use_file_extension", "filepath",
            )),
            (render.image_settings, (
                "media_type", "file_format", "color_mode", "color_depth", "compression", "color_management",
            )),
            (scene.cycles, ("device", "samples", "time_limit", "use_denoising")),
            (scene.display_settings, ("display_device",)),
            (scene.view_settings, (
                "view_transform", "look", "exposure", "gamma", "use_curve_mapping", "use_white_balance",
            )),
            (view_layer, ("use_pass_diffuse_color",)),
        ]
        # fmt: on
        self.values = [(owner, name, getattr(owner, name)) for owner, names in owned for name in names]

    def restore(self) -> None:
        failed = []
        for owner, name, value in self.values:
            try:
                setattr(owner, name, value)
            except (AttributeError, TypeError, ValueError) as error:
                failed.append(f"{name}: {error}")
        if failed:
            raise RuntimeError("could not restore these render settings: " + "; ".join(failed))
