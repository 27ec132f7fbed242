"""Blender cameras → job cameras (blender_addon.cameras, blender_addon.scene_cameras) against Blender itself:
``bpy_extras.object_utils.world_to_camera_view`` for randomised cameras, and Cycles renders."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from blender_addon.cameras import (
    CameraData,
    CameraError,
    RenderSettings,
    fit_to_image,
    intrinsics,
    job_view,
    world_to_camera,
)

pytestmark = pytest.mark.blender

PERCENTAGES = (25, 50, 75, 100, 150, 200)
"""Resolution percentages used with resolutions that are multiples of 4, so W and H are exact:
``world_to_camera_view`` takes the aspect from the unscaled resolution while Cycles renders the truncated size
(see test_render_aspect_follows_the_truncated_size)."""
PLACEMENTS = ("plain", "scaled", "parented", "animated")


def project(w2c: np.ndarray, K: np.ndarray, points: np.ndarray, orthographic: bool) -> np.ndarray:
    """(N, 3) world points → (N, 3) pixel u, v (top-left corner convention) and camera depth z."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    xy = cam[:, :2] if orthographic else cam[:, :2] / cam[:, 2:]
    return np.column_stack([xy @ K[:2, :2].T + K[:2, 2], cam[:, 2]])


def blender_projection(scene, camera_object, points: np.ndarray, width: int, height: int) -> np.ndarray:
    """The same through ``world_to_camera_view``: u = x·W, v = (1 − y)·H, depth z."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    ndc = np.array([tuple(world_to_camera_view(scene, camera_object, Vector(p))) for p in points])
    return np.column_stack([ndc[:, 0] * width, (1 - ndc[:, 1]) * height, ndc[:, 2]])


def points_in_view(w2c: np.ndarray, K: np.ndarray, width: int, height: int, orthographic: bool, rng, count=24):
    """(count, 3) world points that project inside the image, 2–10 units in front of the camera, made by
    inverting the camera under test (Blender's projection of them is what the test compares with)."""
    depth = rng.uniform(2.0, 10.0, count)
    uv = rng.uniform(0, 1, (count, 2)) * [width, height]
    xy = (uv - K[:2, 2]) / np.diag(K)[:2]
    cam = np.column_stack([xy if orthographic else xy * depth[:, None], depth])
    c2w = np.linalg.inv(w2c)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def random_rotation(rng) -> tuple[float, float, float]:
    return tuple(rng.uniform(-math.pi, math.pi, 3))


def add_random_camera(scene, rng, name: str, kind: str, sensor_fit: str, placement: str):
    """A camera object of ``kind`` and ``sensor_fit`` with random lens, sensor and shift, placed by ``placement``
    (plain, scaled, parented or animated); also randomises the scene's render settings. Returns (object, the
    frame to read it at: -1 = current)."""
    import bpy

    data = bpy.data.cameras.new(name)
    data.type = kind
    data.sensor_fit = sensor_fit
    data.lens = rng.uniform(18, 135)
    data.ortho_scale = rng.uniform(0.5, 12)
    data.sensor_width = rng.uniform(24, 36)
    data.sensor_height = rng.uniform(24, 36)
    data.shift_x, data.shift_y = rng.uniform(-0.4, 0.4, 2)
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    obj.location = rng.uniform(-5, 5, 3)
    obj.rotation_euler = random_rotation(rng)
    if placement == "scaled":
        obj.scale = rng.uniform(0.2, 3, 3)  # non-uniform on the camera itself: removed, never a shear
    elif placement == "parented":
        parent = bpy.data.objects.new(f"{name} parent", None)
        scene.collection.objects.link(parent)
        parent.location = rng.uniform(-5, 5, 3)
        parent.rotation_euler = random_rotation(rng)
        parent.scale = (rng.uniform(0.3, 3),) * 3
        obj.parent = parent
    elif placement == "animated":
        obj.keyframe_insert("location", frame=1)
        obj.keyframe_insert("rotation_euler", frame=1)
        data.keyframe_insert("lens", frame=1)
        obj.location = rng.uniform(-5, 5, 3)
        obj.rotation_euler = random_rotation(rng)
        obj.keyframe_insert("location", frame=20)
        obj.keyframe_insert("rotation_euler", frame=20)
        data.lens = rng.uniform(18, 135)
        data.keyframe_insert("lens", frame=20)
    render = scene.render
    render.resolution_x, render.resolution_y = (int(v) * 4 for v in rng.integers(10, 60, 2))
    render.resolution_percentage = int(rng.choice(PERCENTAGES))
    render.pixel_aspect_x, render.pixel_aspect_y = (1.0, 1.0) if rng.random() < 0.2 else rng.uniform(0.5, 2, 2)
    return obj, (int(rng.integers(2, 20)) if placement == "animated" else -1)


def test_random_cameras_match_world_to_camera_view(clean_scene):

    from blender_addon.scene_cameras import posed_cameras, render_settings

    scene = clean_scene
    scene.frame_set(1)
    rng = np.random.default_rng(8)
    errors, depth_errors = [], []
    kinds = itertools.product(("PERSP", "ORTHO"), ("AUTO", "HORIZONTAL", "VERTICAL"), PLACEMENTS)
    for index, (kind, sensor_fit, placement) in enumerate(list(kinds) * 3):  # 72 cameras, every combination
        obj, frame = add_random_camera(scene, rng, f"Camera.{index:03d}", kind, sensor_fit, placement)
        (posed,) = posed_cameras(scene, [(obj, frame)])
        assert scene.frame_current == 1  # restored after reading at another frame
        render = render_settings(scene)
        K, width, height = intrinsics(posed.data, render)
        w2c = world_to_camera(posed.matrix_world, posed.data.name)
        if frame != -1:
            scene.frame_set(frame)
        points = points_in_view(w2c, K, width, height, posed.data.type == "ORTHO", rng)
        expected = blender_projection(scene, obj, points, width, height)
        scene.frame_set(1)
        got = project(w2c, K, points, posed.data.type == "ORTHO")
        errors.append(np.abs(got[:, :2] - expected[:, :2]).max())
        depth_errors.append(np.abs(got[:, 2] - expected[:, 2]).max())
    assert max(errors) < 1e-3  # measured 3.1e-4 px (float32 in Blender; median 2.6e-5 px)
    assert max(depth_errors) < 2e-5  # measured 4.0e-6 world units


def test_scaled_parent_rotated_camera_is_sheared_and_refused():
    rotation_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.8, 0.6]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([1.0, 3.0, 1.0]) @ tilt @ rotation_z
    with pytest.raises(CameraError, match="'Cam' is sheared.*uniform scale"):
        world_to_camera(matrix, "Cam")


def test_mirrored_camera_is_refused_and_a_half_turn_of_scale_is_not(clean_scene):
    import bpy

    from blender_addon.scene_cameras import posed_cameras, render_settings

    scene = clean_scene
    obj = bpy.data.objects.new("Mirror", bpy.data.cameras.new("Mirror"))
    scene.collection.objects.link(obj)
    obj.location = (0.5, -4.0, 1.0)
    obj.rotation_euler = (1.3, 0.1, 0.2)
    obj.scale = (-1.0, 1.0, 1.0)
    (posed,) = posed_cameras(scene, [(obj, -1)])
    with pytest.raises(CameraError, match="'Mirror' is mirrored.*Make the scale positive"):
        world_to_camera(posed.matrix_world, "Mirror")
    obj.scale = (-2.0, -2.0, 2.0)  # two negative axes: a 180° turn about z, which Blender renders unmirrored
    (posed,) = posed_cameras(scene, [(obj, -1)])
    K, width, height = intrinsics(posed.data, render_settings(scene))
    w2c = world_to_camera(posed.matrix_world)
    points = points_in_view(w2c, K, width, height, False, np.random.default_rng(1))
    expected = blender_projection(scene, obj, points, width, height)
    got = project(w2c, K, points, False)
    assert np.abs(got - expected).max() < 1e-3  # measured 1.9e-4


@pytest.mark.parametrize("kind", ["PANO", "CUSTOM"])
def test_panoramic_and_custom_cameras_are_refused_with_the_row(clean_scene, tmp_path, kind):
    import bpy

    from blender_addon.scene_cameras import job_views

    image = tmp_path / "view.png"
    picture = bpy.data.images.new("view", 8, 8)
    picture.save(filepath=str(image))
    rows = []
    for name in ("Good", "Fisheye"):
        obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        clean_scene.collection.objects.link(obj)
        rows.append(SimpleNamespace(camera=obj, image=str(image), mask="", frame=-1))
    rows[1].camera.data.type = kind
    clean_scene.render.resolution_x = clean_scene.render.resolution_y = 8
    clean_scene.render.resolution_percentage = 100
    with pytest.raises(
        CameraError, match="view 2 \\(Fisheye\\): camera 'Fisheye' is .*Perspective or Orthographic"
    ) as info:
        job_views(clean_scene, rows)
    assert info.value.row == 1


def test_image_with_the_render_aspect_scales_K(clean_scene):
    import bpy

    from blender_addon.scene_cameras import posed_cameras, render_settings

    scene = clean_scene
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 300, 200, 100
    render.pixel_aspect_x, render.pixel_aspect_y = 1.0, 1.5
    data = bpy.data.cameras.new("Cam")
    data.lens, data.sensor_fit, data.shift_x, data.shift_y = 35.0, "VERTICAL", 0.1, -0.05
    obj = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(obj)
    obj.location, obj.rotation_euler = (1.0, -6.0, 2.0), (1.2, 0.0, 0.3)
    (posed,) = posed_cameras(scene, [(obj, -1)])
    K, width, height = intrinsics(posed.data, render_settings(scene))
    w2c = world_to_camera(posed.matrix_world)
    points = points_in_view(w2c, K, width, height, False, np.random.default_rng(2))
    ndc = blender_projection(scene, obj, points, 1, 1)[:, :2]  # x and 1 − y, in [0, 1] across the frame
    for image_size in ((150, 100), (151, 100), (1200, 800), (97, 65)):
        fitted = fit_to_image(K, width, height, *image_size)
        got = project(w2c, fitted, points, False)[:, :2]
        assert np.abs(got - ndc * image_size).max() < 5e-4  # measured 1.2e-4 px at 1200 x 800, 1.5e-5 at 150 x 100
    view = job_view(posed.data, render_settings(scene), posed.matrix_world, "img.png", image_size=(150, 100))
    assert (view["width"], view["height"]) == (150, 100) and view["K"][0][2] == pytest.approx(K[0, 2] / 2)
    for image_size in ((150, 102), (200, 200), (100, 150)):
        with pytest.raises(CameraError, match=f"image is {image_size[0]}x{image_size[1]} px but the render size is "):
            fit_to_image(K, width, height, *image_size, name="Cam")


def test_job_view_is_json_ready():
    import json

    camera = CameraData("Side", "ORTHO", ortho_scale=4.0)
    view = job_view(camera, RenderSettings(64, 32), np.eye(4), "images/side.png", mask="", name="side")
    assert json.loads(json.dumps(view)) == view
    assert view["camera_type"] == "orthographic" and "mask" not in view
    assert view["K"] == [[16.0, 0.0, 32.0], [0.0, 16.0, 16.0], [0.0, 0.0, 1.0]]  # 64 px span 4 world units
    assert view["world_to_camera"][1] == [0.0, -1.0, 0.0, 0.0]  # Blender's +y up is OpenCV's −y


def render_alpha(scene, path) -> np.ndarray:
    """Render the scene with Cycles to ``path``; (H, W) alpha with row 0 at the image's top."""
    import bpy

    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(str(path))
    width, height = image.size
    alpha = np.array(image.pixels[:], dtype=np.float32).reshape(height, width, 4)[::-1, :, 3]
    bpy.data.images.remove(image)
    return alpha


def cycles_scene(scene, samples: int) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"


@pytest.mark.parametrize("kind", ["PERSP", "ORTHO"])
def test_rendered_silhouette_matches_the_projected_bounding_box(clean_scene, tmp_path, kind):
    import bpy

    from blender_addon.scene_cameras import posed_cameras, render_settings

    scene = clean_scene
    cycles_scene(scene, samples=4)
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 123, 97, 33  # 40 x 32 (truncated)
    render.pixel_aspect_x, render.pixel_aspect_y = 1.0, 1.25
    mesh = bpy.data.meshes.new("box")
    corners = [(x, y, z) for x in (-0.6, 0.6) for y in (-0.4, 0.4) for z in (-0.5, 0.5)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh.from_pydata(corners, [], quads)
    box = bpy.data.objects.new("box", mesh)
    scene.collection.objects.link(box)
    box.rotation_euler = (0.3, 0.5, 0.7)
    data = bpy.data.cameras.new("cam")
    data.type, data.lens, data.ortho_scale, data.sensor_fit = kind, 60.0, 2.6, "VERTICAL"
    data.shift_x, data.shift_y = 0.08, -0.05
    camera = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.location = (4.0, -3.0, 2.0)
    constraint = camera.constraints.new("TRACK_TO")  # evaluated by posed_cameras
    constraint.target = box
    alpha = render_alpha(scene, tmp_path / "box.png")
    (posed,) = posed_cameras(scene, [(camera, -1)])
    K, width, height = intrinsics(posed.data, render_settings(scene))
    assert alpha.shape == (height, width) == (32, 40)
    vertices = np.array([box.matrix_world @ v.co for v in mesh.vertices])
    uv = project(world_to_camera(posed.matrix_world), K, vertices, kind == "ORTHO")[:, :2]
    rows, cols = np.nonzero(alpha > 0.5)
    rendered = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    projected = np.concatenate([uv.min(0), uv.max(0)])
    assert np.abs(rendered - projected).max() < 0.6  # measured 0.43 px (PERSP), 0.21 px (ORTHO)


def test_render_aspect_follows_the_truncated_size(clean_scene, tmp_path):
    """4999 x 2000 px at 1 % renders 49 x 20 (aspect 2.45, not 2.4995): Cycles frames the truncated size, as
    :func:`intrinsics` does. A half-plane's edge row, summed from alpha, tells the two apart (0.11 px)."""
    import bpy

    scene = clean_scene
    cycles_scene(scene, samples=64)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 4999, 2000, 1
    camera = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))  # at the origin, looking down −z
    scene.collection.objects.link(camera)
    scene.camera = camera
    mesh = bpy.data.meshes.new("half")
    mesh.from_pydata([(-100, -0.8, -10), (100, -0.8, -10), (100, 100, -10), (-100, 100, -10)], [], [(0, 1, 2, 3)])
    scene.collection.objects.link(bpy.data.objects.new("half", mesh))
    alpha = render_alpha(scene, tmp_path / "half.png")
    K, width, height = intrinsics(CameraData("cam", "PERSP"), RenderSettings(4999, 2000, 1))
    edge_row = K[1, 2] + K[1, 1] * 0.8 / 10  # covered rows counted from the top
    full_size_edge_row = 10 + 20 * (50 / 36) * (4999 / 2000) * 0.08  # world_to_camera_view's framing: 15.55
    measured = alpha[:, 5:-5].sum(0).mean()
    assert abs(measured - edge_row) < 0.03  # measured 0.008 (15.436 rows vs 15.444)
    assert abs(measured - full_size_edge_row) > 0.08  # measured 0.118


def test_job_views_read_images_frames_and_masks(clean_scene, tmp_path):
    import bpy

    from blender_addon.scene_cameras import job_views

    scene = clean_scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 50
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    for path, size in ((image, (64, 48)), (mask, (64, 48))):
        picture = bpy.data.images.new(path.stem, *size)
        picture.save(filepath=str(path))
    camera = bpy.data.objects.new("Orbit", bpy.data.cameras.new("Orbit"))
    scene.collection.objects.link(camera)
    camera.keyframe_insert("location", frame=1)
    camera.location = (2.0, 0.0, 0.0)
    camera.keyframe_insert("location", frame=9)
    scene.frame_set(1)
    before = len(bpy.data.images)
    rows = [
        SimpleNamespace(camera=camera, image=str(image), mask=str(mask), frame=9),
        SimpleNamespace(camera=camera, image=str(image), mask="", frame=-1),
    ]
    at_nine, current = job_views(scene, rows)
    assert len(bpy.data.images) == before and scene.frame_current == 1
    assert at_nine["name"] == "Orbit_f0009" and at_nine["mask"] == str(mask) and "mask" not in current
    assert at_nine["world_to_camera"][0][3] == pytest.approx(-2.0) and current["world_to_camera"][0][3] == 0.0
    assert (at_nine["width"], at_nine["height"]) == (64, 48)  # the image's size, K scaled ×2 from 32 x 24
    assert at_nine["K"][0][2] == pytest.approx(32.0) and at_nine["K"][0][0] == pytest.approx(50 / 36 * 64)
    rows[0].image = str(tmp_path / "missing.png")
    with pytest.raises(CameraError, match="view 1 \\(Orbit_f0009\\): cannot read the image .*missing.png") as info:
        job_views(scene, rows)
    assert info.value.row == 0


def test_the_backend_reads_the_views_as_blender_projects(clean_scene, tmp_path):
    """job_views → job.json → the backend's own loader and projection agree with world_to_camera_view."""
    import json

    import bpy

    from backend.cameras import project as backend_project
    from backend.inputs.job_file import load_job_file
    from blender_addon.scene_cameras import job_views

    scene = clean_scene
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 96, 64, 50
    render.pixel_aspect_x, render.pixel_aspect_y = 1.2, 1.0
    image = tmp_path / "view.png"
    picture = bpy.data.images.new("view", 96, 64)  # twice the render size: K is scaled
    picture.save(filepath=str(image))
    rows = []
    for kind, shift in (("PERSP", (0.1, 0.05)), ("ORTHO", (-0.2, 0.1))):
        data = bpy.data.cameras.new(kind)
        data.type, data.ortho_scale, data.sensor_fit = kind, 3.0, "VERTICAL"
        data.shift_x, data.shift_y = shift
        camera = bpy.data.objects.new(kind, data)
        scene.collection.objects.link(camera)
        camera.location, camera.rotation_euler = (2.0, -5.0, 1.5), (1.3, 0.1, 0.4)
        rows.append(SimpleNamespace(camera=camera, image=str(image), mask="", frame=-1))
    job = {"views": job_views(scene, rows), "bounds": {"centre": [0, 0, 0], "size": 2}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    loaded = load_job_file(tmp_path / "job.json")
    bpy.context.view_layer.update()
    points = np.random.default_rng(3).uniform(-1, 1, (30, 3))
    for row, view in zip(rows, loaded.views):
        assert view.camera.orthographic == (row.camera.data.type == "ORTHO")
        uv, depth = backend_project(view.camera, points)
        expected = blender_projection(scene, row.camera, points, 96, 64)
        assert np.abs(uv - expected[:, :2]).max() < 1e-4  # measured 7.2e-6 px (PERSP), 5.9e-6 px (ORTHO)
        assert np.abs(depth - expected[:, 2]).max() < 1e-5  # measured 9.6e-7
