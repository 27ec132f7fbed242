"""COLMAP sparse models written here in both of COLMAP's documented layouts (text and little-endian binary), read
back: the cameras match, and a known 3D point lands on the expected pixel, with and without lens distortion."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from backend.cameras import Camera, intrinsics, look_at, project
from backend.errors import InputError
from backend.inputs import load_colmap, load_job

POINT = np.array([[0.1, -0.2, 0.15]])
MODEL_IDS = {
    "SIMPLE_PINHOLE": 0,
    "PINHOLE": 1,
    "SIMPLE_RADIAL": 2,
    "RADIAL": 3,
    "OPENCV": 4,
    "OPENCV_FISHEYE": 5,
    "FULL_OPENCV": 6,
    "FOV": 7,
}
"""COLMAP's model ids (``src/colmap/sensor/models.h``)."""


def scene_cameras(width=24, height=16) -> list[Camera]:
    """Non-square images, fx ≠ fy, off-centre principal point: catches axis and size mix-ups."""
    K = intrinsics(20.0 * width / 24, 22.0 * width / 24, 11.5 * width / 24, 9.0 * width / 24)
    centres = [(3.0, 0.5, 1.0), (-1.0, 2.8, 0.5), (0.2, -3.0, 1.5)]
    return [Camera(look_at(c, (0.0, 0.0, 0.0)), K.copy(), width, height) for c in centres]


def quaternion(w2c: np.ndarray) -> list[float]:
    """COLMAP's (QW, QX, QY, QZ) for a rotation (scipy gives x, y, z, w)."""
    x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()
    return [w, x, y, z]


def write_text_model(folder, cameras: dict, images: list):
    """cameras: {id: (model, width, height, params)}; images: [(id, w2c, camera_id, name, points2D)]."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    for camera_id, (model, width, height, params) in cameras.items():
        lines.append(" ".join([str(camera_id), model, str(width), str(height), *(repr(float(p)) for p in params)]))
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
    ]
    for image_id, w2c, camera_id, name, points in images:
        pose = [*quaternion(w2c), *w2c[:3, 3]]
        lines.append(" ".join([str(image_id), *(repr(float(v)) for v in pose), str(camera_id), name]))
        lines.append(" ".join(f"{x} {y} {pid}" for x, y, pid in points))  # empty when the image has no points
    (folder / "images.txt").write_text("\n".join(lines) + "\n")


def write_binary_model(folder, cameras: dict, images: list):
    folder.mkdir(parents=True, exist_ok=True)
    data = struct.pack("<Q", len(cameras))
    for camera_id, (model, width, height, params) in cameras.items():
        data += struct.pack("<IiQQ", camera_id, MODEL_IDS[model], width, height)
        data += struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(images))
    for image_id, w2c, camera_id, name, points in images:
        data += struct.pack("<I7dI", image_id, *quaternion(w2c), *w2c[:3, 3], camera_id)
        data += name.encode() + b"\0" + struct.pack("<Q", len(points))
        for x, y, pid in points:
            data += struct.pack("<ddq", x, y, pid)
    (folder / "images.bin").write_bytes(data)


WRITERS = {"txt": write_text_model, "bin": write_binary_model}


def write_photos(folder, cameras, names, spots=None):
    """RGBA photos: an opaque disc around the projected origin; or, with ``spots`` (pixel positions), a bright
    Gaussian spot on black (16-bit grey)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (cam, name) in enumerate(zip(cameras, names)):
        jj, ii = np.mgrid[: cam.height, : cam.width] + 0.5
        if spots is None:
            u, v = project(cam, np.zeros((1, 3)))[0][0]
            inside = (ii - u) ** 2 + (jj - v) ** 2 < (0.3 * min(cam.width, cam.height)) ** 2
            rgba = np.zeros((cam.height, cam.width, 4), np.uint8)
            rgba[..., 0], rgba[..., 3] = 200, np.where(inside, 255, 0)
            Image.fromarray(rgba, "RGBA").save(folder / name)
        else:
            u, v = spots[n]
            spot = np.exp(-((ii - u) ** 2 + (jj - v) ** 2) / 2)  # σ = 1 px: a wider spot's centroid bends with the lens
            Image.fromarray((spot * 65535).round().astype(np.uint16)).save(folder / name)


def pinhole_scene(root, fmt, model_dir="sparse/0", model="PINHOLE"):
    cameras = scene_cameras()
    K = cameras[0].K
    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if model == "PINHOLE" else [K[0, 0], K[0, 2], K[1, 2]]
    if model == "SIMPLE_PINHOLE":
        cameras = [Camera(c.world_to_camera, intrinsics(K[0, 0], K[0, 0], K[0, 2], K[1, 2]), 24, 16) for c in cameras]
    names = ["c.png", "a.png", "b.png"]  # file order differs from name order
    images = [
        (7 + n, cam.world_to_camera, 3, name, [(1.5, 2.5, 10), (3.0, 4.0, -1)] if n == 1 else [])
        for n, (cam, name) in enumerate(zip(cameras, names))
    ]
    WRITERS[fmt](root / model_dir, {3: (model, 24, 16, params)}, images)
    write_photos(root / "images", cameras, names)
    by_name = dict(zip(names, cameras))
    return [by_name[n] for n in sorted(names)]


def assert_same(job, cameras):
    assert [v.name for v in job.views] == ["a", "b", "c"]
    for view, cam in zip(job.views, cameras):
        np.testing.assert_allclose(view.camera.world_to_camera, cam.world_to_camera, atol=1e-9)
        np.testing.assert_allclose(view.camera.K, cam.K, atol=1e-9)
        assert (view.camera.width, view.camera.height) == (24, 16)
        np.testing.assert_allclose(project(view.camera, POINT)[0], project(cam, POINT)[0], atol=1e-6)
        assert view.mask is not None and view.mask.shape == (16, 24)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_PINHOLE"])
def test_round_trip(tmp_path, fmt, model):
    cameras = pinhole_scene(tmp_path, fmt, model=model)
    job = load_job(tmp_path)
    assert_same(job, cameras)
    assert job.source == str(tmp_path / "sparse" / "0")
    # By hand, COLMAP's way: pixel = K · (R X + t) / z, principal point in the corner convention.
    cam = cameras[0]
    X = cam.world_to_camera[:3, :3] @ POINT[0] + cam.world_to_camera[:3, 3]
    expected = cam.K[:2, :2] @ (X[:2] / X[2]) + cam.K[:2, 2]
    np.testing.assert_allclose(project(job.views[0].camera, POINT)[0][0], expected, atol=1e-9)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("where", ["sparse", "model", "camera_file"])
def test_model_locations(tmp_path, fmt, where):
    """A model in sparse/, the model folder given itself, or one of its files given."""
    model_dir = "sparse" if where == "sparse" else "sparse/0"
    cameras = pinhole_scene(tmp_path, fmt, model_dir=model_dir)
    target = {"sparse": tmp_path, "model": tmp_path / model_dir, "camera_file": tmp_path / model_dir / f"images.{fmt}"}
    assert_same(load_job(target[where]), cameras)


def test_binary_wins_over_text(tmp_path):
    cameras = pinhole_scene(tmp_path, "bin")
    write_text_model(tmp_path / "sparse" / "0", {3: ("PINHOLE", 24, 16, [99.0, 99.0, 12.0, 8.0])}, [])
    assert_same(load_job(tmp_path), cameras)


LENSES = {
    "SIMPLE_RADIAL": ([-0.2], [-0.2, 0, 0, 0, 0]),
    "RADIAL": ([-0.18, 0.05], [-0.18, 0.05, 0, 0, 0]),
    "OPENCV": ([-0.2, 0.04, 0.002, -0.003], [-0.2, 0.04, 0.002, -0.003, 0]),
    "FULL_OPENCV": (
        [0.3, -0.1, 0.002, 0.001, 0.01, 0.05, -0.05, 0.02],
        [0.3, -0.1, 0.002, 0.001, 0.01, 0.05, -0.05, 0.02],
    ),
    "OPENCV_FISHEYE": ([0.06, -0.02, 0.004, -0.0005], [0.06, -0.02, 0.004, -0.0005]),
}
"""COLMAP extra PARAMS, and the same lens as OpenCV distCoeffs (used to draw the photos)."""


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("model", sorted(LENSES))
def test_distorted_models(tmp_path, fmt, model):
    """OpenCV draws a spot where each distorted camera sees a known point; after loading (undistortion included)
    the spot sits where the loaded pinhole camera projects that point. Measured: 0.008–0.023 px off, for a lens
    that moves the point 3.0–4.5 px."""
    cv2 = pytest.importorskip("cv2")
    width, height, f = 192, 128, 140.0
    two_focals = "OPENCV" in model
    K = intrinsics(f, f * 1.02 if two_focals else f, 96.5, 62.0)
    extra, coefficients = LENSES[model]
    first = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if two_focals else [f, K[0, 2], K[1, 2]]
    cameras = [Camera(look_at(c, (0, 0, 0)), K.copy(), width, height) for c in [(3, 0.5, 1), (-1, 2.8, 0.5)]]
    point = np.array([0.45, -0.3, 1.0]) * 3.2  # off-axis, in front of each camera: set in camera space
    worlds = [np.linalg.inv(c.world_to_camera) @ np.append(point, 1.0) for c in cameras]
    project_cv = cv2.fisheye.projectPoints if model == "OPENCV_FISHEYE" else cv2.projectPoints
    spot = project_cv(point.reshape(1, 1, 3), np.zeros(3), np.zeros(3), K, np.array(coefficients))[0].reshape(2)
    names = ["p0.png", "p1.png"]
    images = [(n + 1, c.world_to_camera, 1, name, []) for n, (c, name) in enumerate(zip(cameras, names))]
    WRITERS[fmt](tmp_path / "sparse" / "0", {1: (model, width, height, first + extra)}, images)
    write_photos(tmp_path / "images", cameras, names, spots=[spot, spot])
    job = load_job(tmp_path, options_override={"bounds": {"centre": [0, 0, 0], "size": 1.0}})
    for view, world in zip(job.views, worlds):
        expected = project(view.camera, world[None, :3])[0][0]
        grey = view.rgb[..., 0]
        jj, ii = np.mgrid[:height, :width] + 0.5
        window = (np.abs(ii - expected[0]) < 8) & (np.abs(jj - expected[1]) < 8)
        weight = np.where(window, grey, 0.0)
        found = np.array([(weight * ii).sum(), (weight * jj).sum()]) / weight.sum()
        assert np.abs(found - expected).max() < 0.05, f"{model}: spot at {found}, camera says {expected}"
        assert np.abs(spot - (K[:2, :2] @ point[:2] / point[2] + K[:2, 2])).max() > 3.0  # the lens matters
    assert not job.warnings


def test_masks_and_downscaled_photos(tmp_path):
    """COLMAP-style mask names (NAME.png) next to the photos; photos at half size get K halved."""
    cameras = scene_cameras(48, 32)
    K = cameras[0].K
    names = ["a.jpg", "b.jpg"]
    images = [(n + 1, c.world_to_camera, 1, name, []) for n, (c, name) in enumerate(zip(cameras, names))]
    write_text_model(tmp_path / "sparse" / "0", {1: ("PINHOLE", 48, 32, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])}, images)
    (tmp_path / "small").mkdir()
    (tmp_path / "masks").mkdir()
    for name in names:
        Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(tmp_path / "small" / name)
        Image.fromarray(np.full((16, 24), 255, np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    job = load_colmap(tmp_path, images=tmp_path / "small")
    for view, cam in zip(job.views, cameras):
        np.testing.assert_allclose(view.camera.K, cam.scaled(24, 16).K, atol=1e-12)
        assert view.mask is not None and view.mask.min() == 1.0
    none = load_colmap(tmp_path, images=tmp_path / "small", options={"mask_source": "none"})
    assert all(view.mask is None for view in none.views)


def test_errors_explain_the_fix(tmp_path):
    cameras = scene_cameras()
    images = [(1, cameras[0].world_to_camera, 1, "a.png", [])]
    write_text_model(tmp_path / "fov" / "sparse", {1: ("FOV", 24, 16, [20, 20, 12, 8, 0.9])}, images)
    with pytest.raises(InputError, match="FOV model") as info:
        load_job(tmp_path / "fov")
    assert "image_undistorter" in info.value.fix
    write_binary_model(tmp_path / "fovbin", {1: ("FOV", 24, 16, [20, 20, 12, 8, 0.9])}, images)
    with pytest.raises(InputError, match="FOV model"):
        load_colmap(tmp_path / "fovbin")
    write_text_model(tmp_path / "noimages" / "sparse" / "0", {1: ("PINHOLE", 24, 16, [20, 20, 12, 8])}, images)
    with pytest.raises(InputError, match="no images folder") as info:
        load_job(tmp_path / "noimages")
    assert "images/" in info.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="COLMAP model") as info:
        load_job(tmp_path / "empty")
    assert "sparse/0" in info.value.fix and "poses_bounds.npy" in info.value.fix
    write_binary_model(tmp_path / "cut" / "sparse", {1: ("PINHOLE", 24, 16, [20, 20, 12, 8])}, images)
    data = (tmp_path / "cut" / "sparse" / "images.bin").read_bytes()
    (tmp_path / "cut" / "sparse" / "images.bin").write_bytes(data[:40])
    (tmp_path / "cut" / "images").mkdir()
    with pytest.raises(InputError, match="truncated"):
        load_job(tmp_path / "cut")
