"""Ring cameras and Cycles views of a red sphere, with the real ``bpy`` module."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from blender_addon import render_views

pytestmark = pytest.mark.blender

RED = (0.8, 0.05, 0.05)
SPHERE_CENTRE = (0.3, -0.2, 1.0)


def _srgb(linear):
    linear = np.asarray(linear, dtype=float)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


@pytest.fixture
def red_sphere(clean_scene):
    """A UV sphere of radius 1 off the origin with a red Principled material, lit by a sun; yields (scene, sphere)."""
    import bpy

    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, segments=24, ring_count=12, location=SPHERE_CENTRE)
    sphere = bpy.context.active_object
    material = bpy.data.materials.new("red")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*RED, 1.0)
    sphere.data.materials.append(material)
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    clean_scene.collection.objects.link(sun)
    clean_scene.render.resolution_x = clean_scene.render.resolution_y = 64
    yield clean_scene, sphere


def _read_png(path) -> np.ndarray:
    """(H, W, 4) floats in [0, 1], top row first, as stored (sRGB-encoded, straight alpha)."""
    import bpy

    image = bpy.data.images.load(str(path))
    try:
        width, height = image.size
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    return pixels.reshape(height, width, 4)[::-1]


def _png_bit_depth_and_colour_type(path) -> tuple[int, int]:
    header = path.read_bytes()[:26]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">BB", header[24:26])


def _projected_box(scene, camera, points) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels, top-left corner (0, 0), of world points seen by ``camera``."""
    from bpy_extras.object_utils import world_to_camera_view

    width = scene.render.resolution_x * scene.render.resolution_percentage / 100
    height = scene.render.resolution_y * scene.render.resolution_percentage / 100
    uv = np.array([tuple(world_to_camera_view(scene, camera, p))[:2] for p in points])
    u, v = uv[:, 0] * width, (1 - uv[:, 1]) * height
    return u.min(), v.min(), u.max(), v.max()


def _world_vertices(obj):
    return [obj.matrix_world @ v.co for v in obj.data.vertices]


def test_selection_bounds_of_a_sphere_uses_world_space(red_sphere):
    import bpy

    scene, sphere = red_sphere
    bounds = render_views.selection_bounds([sphere], bpy.context.evaluated_depsgraph_get())
    assert np.allclose(bounds.centre, SPHERE_CENTRE, atol=1e-5)
    assert np.allclose(bounds.size, (2.0, 2.0, 2.0), atol=1e-5)  # 24 segments: vertices on the x and y axes


def _geometry_nodes(obj, *node_types):
    """Give ``obj`` a geometry-nodes modifier chaining the nodes of ``node_types`` (first input ← previous output);
    returns the nodes."""
    import bpy

    tree = bpy.data.node_groups.new("chain", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes = [
        tree.nodes.new("NodeGroupInput"),
        *(tree.nodes.new(t) for t in node_types),
        tree.nodes.new("NodeGroupOutput"),
    ]
    for upstream, downstream in zip(nodes, nodes[1:]):
        tree.links.new(upstream.outputs[0], downstream.inputs[0])
    obj.modifiers.new("chain", "NODES").node_group = tree
    return nodes[1:-1]


def test_selection_bounds_include_geometry_nodes_instances(clean_scene):
    """A plane whose geometry nodes put a 1×1×5 box on each of its 4 corners: only the instances have extent."""
    import bpy

    bpy.ops.mesh.primitive_plane_add(size=2.0)
    plane = bpy.context.active_object
    (on_points,) = _geometry_nodes(plane, "GeometryNodeInstanceOnPoints")
    box = on_points.id_data.nodes.new("GeometryNodeMeshCube")
    box.inputs["Size"].default_value = (1.0, 1.0, 5.0)
    on_points.id_data.links.new(box.outputs[0], on_points.inputs["Instance"])

    bounds = render_views.selection_bounds([plane], bpy.context.evaluated_depsgraph_get())
    assert np.allclose(bounds.centre, (0.0, 0.0, 0.0), atol=1e-5)
    assert np.allclose(bounds.size, (3.0, 3.0, 5.0), atol=1e-5)


def test_selection_bounds_include_a_volume(clean_scene):
    """A 2-unit cube at (1, 2, 3) turned into a volume by geometry nodes: the box is the volume's grid bounds."""
    import bpy

    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(1.0, 2.0, 3.0))
    cube = bpy.context.active_object
    _geometry_nodes(cube, "GeometryNodeMeshToVolume")

    bounds = render_views.selection_bounds([cube], bpy.context.evaluated_depsgraph_get())
    assert np.abs(np.array(bounds.centre) - (1.0, 2.0, 3.0)).max() < 0.05  # measured 0.027 (voxel grid)
    assert np.abs(np.array(bounds.size) - 2.0).max() < 0.7  # measured 0.60: voxels and the grid's padding


def test_selection_bounds_without_geometry_is_a_clear_error(clean_scene):
    import bpy

    lamp = bpy.data.objects.new("lamp", bpy.data.lights.new("lamp", "POINT"))
    empty_mesh = bpy.data.objects.new("nothing", bpy.data.meshes.new("nothing"))
    for obj in (lamp, empty_mesh):
        clean_scene.collection.objects.link(obj)
    with pytest.raises(ValueError, match=r"no.*geometry to frame \(lamp, nothing\)"):
        render_views.selection_bounds([lamp, empty_mesh], bpy.context.evaluated_depsgraph_get())


def test_ring_sees_the_whole_object_and_rerunning_replaces_it(red_sphere):
    import bpy
    from mathutils import Vector

    scene, sphere = red_sphere
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080  # the fit uses the frame's narrower side
    render_views.ring_cameras(scene, [sphere], count=8)
    cameras = render_views.ring_cameras(scene, [sphere], count=8)

    assert [c.name for c in cameras] == [f"GTR_cam_{i:03d}" for i in range(8)]
    assert len(bpy.data.cameras) == len([o for o in bpy.data.objects if o.type == "CAMERA"]) == 8
    collection = bpy.data.collections["GTR Views Sphere"]
    assert sorted(o.name for o in collection.objects) == [c.name for c in cameras]
    bounds = render_views.selection_bounds([sphere], bpy.context.evaluated_depsgraph_get())
    elevations = [np.degrees(np.arcsin((c.location - bounds.centre).normalized().z)) for c in cameras]
    assert np.allclose(sorted(elevations), [-10.0] * 4 + [30.0] * 4, atol=1e-4)
    half = np.array(bounds.size) / 2
    signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
    corners = [bounds.centre + Vector(half * sign) for sign in signs]
    reach = 0.0  # how far from the image centre a corner lands, as a fraction of the half-frame
    for camera in cameras:
        left, top, right, bottom = _projected_box(scene, camera, corners)
        assert left > 0 and top > 0 and right < 1920 and bottom < 1080, camera.name
        reach = max(reach, abs(left - 960) / 960, abs(right - 960) / 960, abs(top - 540) / 540, abs(bottom - 540) / 540)
    assert abs(reach - 1 / 1.1) < 1e-4  # measured 0.90909: the tightest corner sits at the 10% margin


def test_lit_views_are_rgba_with_alpha_on_the_object_only(red_sphere, tmp_path):
    scene, sphere = red_sphere
    cameras = render_views.ring_cameras(scene, [sphere], count=8)
    seen = []
    views = render_views.render_views(
        scene, cameras, tmp_path, resolution=48, samples=2, progress=lambda *a: seen.append(a)
    )

    assert seen == [(i, 8) for i in range(1, 9)]
    assert [path.name for _, path in views] == [f"GTR_cam_{i:03d}.png" for i in range(8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"GTR_cam_{i:03d}.png" for i in range(8)]
    scene.render.resolution_x = scene.render.resolution_y = 48  # to project at the rendered size
    for camera, path in views:
        assert _png_bit_depth_and_colour_type(path) == (8, 6)  # 8-bit RGBA
        image = _read_png(path)
        assert image.shape == (48, 48, 4)
        left, top, right, bottom = _projected_box(scene, camera, _world_vertices(sphere))
        rows, cols = np.nonzero(image[..., 3] > 0.5)
        # alpha-covered pixel centres (i + 0.5) against the projected silhouette's extent
        assert abs(cols.min() + 0.5 - left) < 0.5 and abs(cols.max() + 0.5 - right) < 0.5  # measured ≤ 0.16 px
        assert abs(rows.min() + 0.5 - top) < 0.5 and abs(rows.max() + 0.5 - bottom) < 0.5
        outside = np.ones((48, 48), bool)
        outside[max(0, int(top) - 2) : int(bottom) + 3, max(0, int(left) - 2) : int(right) + 3] = False
        assert image[..., 3][outside].max() == 0.0


def _object_colour(path) -> np.ndarray:
    image = _read_png(path)
    return np.median(image[image[..., 3] == 1.0][:, :3], axis=0)


def test_albedo_is_the_base_colour_whatever_the_light(red_sphere, tmp_path):
    import bpy

    scene, sphere = red_sphere
    cameras = render_views.ring_cameras(scene, [sphere], count=2, elevations=(30.0,))
    sun = bpy.data.objects["sun"].data
    colours = {}
    for energy in (3.0, 0.5):
        sun.energy = energy
        for source in ("LIT", "ALBEDO"):
            views = render_views.render_views(scene, cameras[:1], tmp_path / f"{source}{energy}", 48, 4, source)
            colours[source, energy] = _object_colour(views[0][1])

    expected = _srgb(RED)  # (0.906, 0.248, 0.248)
    # the specular layer of the Principled BSDF keeps about 4% from the diffuse one seen head-on
    assert np.abs(colours["ALBEDO", 3.0] - expected).max() < 0.03  # measured 0.020
    assert np.abs(colours["ALBEDO", 3.0] - colours["ALBEDO", 0.5]).max() < 0.004  # measured 0 (under 1/255)
    assert np.abs(colours["LIT", 3.0] - colours["LIT", 0.5]).max() > 0.2  # measured 0.33


def _settings(scene) -> dict:
    """A broad snapshot of the scene's render-related settings, listed independently of the module's own list."""
    import bpy

    def props(owner):
        values = {}
        for prop in owner.bl_rna.properties:
            if prop.identifier == "rna_type" or prop.type in {"POINTER", "COLLECTION"}:
                continue
            value = getattr(owner, prop.identifier)
            values[prop.identifier] = tuple(value) if getattr(prop, "is_array", False) else value
        return values

    snapshot = {"scene": (scene.camera, scene.compositing_node_group, scene.frame_current)}
    for name, owner in {
        "render": scene.render,
        "image": scene.render.image_settings,
        "cycles": scene.cycles,
        "view": scene.view_settings,
        "display": scene.display_settings,
        "layer": bpy.context.view_layer,
    }.items():
        snapshot[name] = props(owner)
    snapshot["node_groups"] = sorted(g.name for g in bpy.data.node_groups)
    return snapshot


def _unusual_settings(scene):
    """Settings a user might have that the renders must not keep or leave changed."""
    import bpy

    scene.render.engine = "BLENDER_EEVEE"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1000, 777, 50
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "JPEG"
    scene.render.filepath = "//frames/shot_####"
    scene.cycles.samples, scene.cycles.use_denoising = 77, True
    scene.view_settings.view_transform, scene.view_settings.exposure = "AgX", 0.5
    user_camera = bpy.data.objects.new("user camera", bpy.data.cameras.new("user camera"))
    scene.collection.objects.link(user_camera)
    scene.camera = user_camera
    scene.compositing_node_group = bpy.data.node_groups.new("user compositor", "CompositorNodeTree")


def test_settings_are_restored_after_rendering_and_after_a_cancel(red_sphere, tmp_path):
    scene, sphere = red_sphere
    cameras = render_views.ring_cameras(scene, [sphere], count=4, elevations=(30.0,))
    _unusual_settings(scene)
    before = _settings(scene)

    views = render_views.render_views(scene, cameras[:1], tmp_path / "albedo", 32, 2, "ALBEDO")
    assert _settings(scene) == before
    assert _read_png(views[0][1]).shape == (25, 32, 4)  # the scene's 1000×777 aspect: 777 / 1000 · 32 = 24.9

    done = []
    with pytest.raises(render_views.RenderCancelled) as cancelled:
        render_views.render_views(
            scene, cameras, tmp_path / "cancelled", 32, 2, "ALBEDO",
            progress=lambda finished, total: done.append(finished), cancel=lambda: len(done) == 2,
        )  # fmt: skip
    assert [camera.name for camera, _ in cancelled.value.rendered] == ["GTR_cam_000", "GTR_cam_001"]
    assert sorted(p.name for p in (tmp_path / "cancelled").iterdir()) == ["GTR_cam_000.png", "GTR_cam_001.png"]
    assert _settings(scene) == before

    def failing_progress(done, total):
        raise RuntimeError("a failure in the middle")

    with pytest.raises(RuntimeError, match="a failure in the middle"):
        render_views.render_views(scene, cameras, tmp_path / "failed", 32, 2, "LIT", progress=failing_progress)
    assert _settings(scene) == before
