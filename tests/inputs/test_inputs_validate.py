"""Bad inputs: every case raises InputError naming the view, its index and a fix."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from backend.cameras import Camera, orbit_cameras, w2c_to_opengl_c2w
from backend.errors import InputError
from backend.inputs import check_output_dir, load_job, validate_job
from backend.views import Bounds, Job, View

SIZE = 16


def make_job(count=3, bounds=True) -> Job:
    """In-memory job: orbit cameras around the origin, grey images, full masks."""
    views = []
    for n, cam in enumerate(orbit_cameras(count, radius=3.0, fov_degrees=40.0, size=SIZE)):
        rgb = np.full((SIZE, SIZE, 3), 0.5, np.float32)
        views.append(View(f"v{n}", cam, rgb, np.ones((SIZE, SIZE), np.float32)))
    box = Bounds(np.zeros(3), np.full(3, 1.0)) if bounds else None
    return Job(views=views, bounds=box)


def with_camera(job: Job, index: int, w2c=None, K=None) -> Job:
    view = job.views[index]
    cam = view.camera
    w2c = cam.world_to_camera if w2c is None else w2c
    K = cam.K if K is None else K
    view.camera = Camera(np.asarray(w2c, float), np.asarray(K, float), cam.width, cam.height, cam.orthographic)
    return job


def raises(job: Job, phrase: str, view="v1", index=1) -> InputError:
    with pytest.raises(InputError, match=phrase) as info:
        validate_job(job)
    assert (info.value.view, info.value.index) == (view, index)
    assert info.value.fix
    return info.value


def rgba_square(path) -> None:
    """A transparent image with an opaque centre square (a non-empty alpha mask)."""
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = 255
    Image.fromarray(pixels, "RGBA").save(path)


def write_job(root, count=2, **view_fields) -> None:
    entries = []
    for n, cam in enumerate(orbit_cameras(count, radius=3.0, fov_degrees=40.0, size=SIZE)):
        rgba_square(root / f"v{n}.png")
        entries.append({"image": f"v{n}.png", "world_to_camera": cam.world_to_camera.tolist(), "K": cam.K.tolist()})
    entries[1].update(view_fields)
    (root / "job.json").write_text(json.dumps({"views": entries}))


def test_good_job_passes():
    job = make_job()
    assert validate_job(job) is job


def test_missing_image(tmp_path):
    write_job(tmp_path, image="nowhere/v1.png")
    with pytest.raises(InputError, match="image file not found") as info:
        load_job(tmp_path)
    assert (info.value.view, info.value.index) == ("v1", 1)


def test_corrupt_image(tmp_path):
    write_job(tmp_path)
    (tmp_path / "v1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(InputError, match="cannot read image") as info:
        load_job(tmp_path)
    assert (info.value.view, info.value.index) == ("v1", 1)
    assert "re-export" in info.value.fix


def test_image_size_differs_from_camera(tmp_path):
    write_job(tmp_path, width=20)
    with pytest.raises(InputError, match="image size 16x16 does not match the camera's 20x16") as info:
        load_job(tmp_path)
    assert (info.value.view, info.value.index) == ("v1", 1)


def test_fewer_than_two_views():
    job = make_job(count=1)
    with pytest.raises(InputError, match="at least 2 views"):
        validate_job(job)


@pytest.mark.parametrize("where", ["w2c", "K"])
def test_non_finite_camera(where):
    job = make_job()
    matrix = (job.views[1].camera.world_to_camera if where == "w2c" else job.views[1].camera.K).copy()
    matrix[0, 0] = np.nan if where == "w2c" else np.inf
    raises(with_camera(job, 1, **{"w2c" if where == "w2c" else "K": matrix}), "non-finite")


def test_singular_camera():
    job = make_job()
    w2c = job.views[1].camera.world_to_camera.copy()
    w2c[:3, :3] = 0.0
    raises(with_camera(job, 1, w2c=w2c), "not a rigid transform")


def test_scaled_camera_is_not_rigid():
    job = make_job()
    w2c = job.views[1].camera.world_to_camera.copy()
    w2c[:3, :3] *= 1.01
    raises(with_camera(job, 1, w2c=w2c), "not orthonormal")


def test_small_rounding_is_accepted():
    job = make_job()
    w2c = np.round(job.views[1].camera.world_to_camera, 5)
    validate_job(with_camera(job, 1, w2c=w2c))


def test_reflected_camera():
    job = make_job()
    w2c = np.diag([1.0, 1.0, -1.0, 1.0]) @ job.views[1].camera.world_to_camera
    raises(with_camera(job, 1, w2c=w2c), "reflection")


@pytest.mark.parametrize("fx", [0.0, -20.0])
def test_non_positive_focal(fx):
    job = make_job()
    K = job.views[1].camera.K.copy()
    K[0, 0] = fx
    raises(with_camera(job, 1, K=K), "focal length must be positive")


def test_bounds_behind_camera():
    job = make_job()
    cam = job.views[0].camera  # the first view checked fails first
    job.bounds = Bounds(cam.centre - 0.5 * cam.forward, np.full(3, 0.1))
    raises(job, "behind the camera", view="v0", index=0)


def test_bounds_outside_image():
    job = make_job()
    cam = job.views[0].camera
    right = cam.camera_to_world[:3, 0]
    job.bounds = Bounds(cam.centre + 2.0 * cam.forward + 5.0 * right, np.full(3, 0.2))
    error = raises(job, "outside the image", view="v0", index=0)
    assert "world frame" in error.fix


def test_large_bounds_around_the_camera_pass():
    job = make_job()
    job.bounds = Bounds(np.zeros(3), np.full(3, 20.0))  # corners behind the cameras: no false alarm
    validate_job(job)


def test_no_mask_and_no_bounds_pass():
    job = make_job(bounds=False)  # the pipeline derives masks, with bounds from where the cameras look
    job.views[1].mask = None
    validate_job(job)


@pytest.mark.parametrize("camera_type", ["panoramic", "equirectangular", "fisheye"])
def test_panoramic_job_json(tmp_path, camera_type):
    write_job(tmp_path, camera_type=camera_type)
    with pytest.raises(InputError, match="panoramic") as info:
        load_job(tmp_path)
    assert (info.value.view, info.value.index) == ("v1", 1)


@pytest.mark.parametrize("model", ["FISHEYE", "EQUIRECTANGULAR"])
def test_panoramic_transforms(tmp_path, model):
    cam = orbit_cameras(1, radius=3.0, fov_degrees=40.0, size=SIZE)[0]
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "a.png")
    frame = {"file_path": "a.png", "transform_matrix": w2c_to_opengl_c2w(cam.world_to_camera).tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_model": model, "fl_x": 10, "frames": [frame]}))
    with pytest.raises(InputError, match="panoramic") as info:
        load_job(tmp_path)
    assert (info.value.view, info.value.index) == ("a", 0)


def test_distortion_is_removed_without_warning(tmp_path):
    frames = []
    for n, cam in enumerate(orbit_cameras(2, radius=3.0, fov_degrees=40.0, size=SIZE)):
        rgba_square(tmp_path / f"a{n}.png")
        frames.append({"file_path": f"a{n}.png", "transform_matrix": w2c_to_opengl_c2w(cam.world_to_camera).tolist()})
    data = {"camera_model": "OPENCV", "fl_x": 20, "k1": 0.5, "p2": 0.0, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning, and no job warning: the images are undistorted
        job = load_job(tmp_path)
    assert len(job.views) == 2 and not job.warnings
    # pincushion (k1 > 0) pushes the corners out of the photo: the pinhole view zooms in until none is blank
    assert 20.5 < job.views[0].camera.K[0, 0] < 22.0


def test_output_dir(tmp_path):
    """Checked without creating anything: the writers make the folder, so a failed run leaves none behind."""
    path = check_output_dir(tmp_path / "a" / "b")
    assert path == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    (tmp_path / "made").mkdir()
    assert check_output_dir(tmp_path / "made") == tmp_path / "made"
    assert list((tmp_path / "made").iterdir()) == []  # the write probe is gone
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not writable") as info:
        check_output_dir(tmp_path / "file.txt" / "out")
    assert "output folder" in info.value.fix


def test_mask_size_differs():
    job = make_job()
    job.views[1].mask = np.ones((8, 8), np.float32)
    raises(job, "mask size")


def test_depth_size_differs():
    job = make_job()
    job.views[1].depth = np.ones((SIZE, SIZE + 1), np.float32)
    raises(job, "depth size")


def test_bad_job_file_fields(tmp_path):
    write_job(tmp_path, K=[[1, 0], [0, 1]])
    with pytest.raises(InputError, match="'K' must be a 3x3") as info:
        load_job(tmp_path)
    assert info.value.index == 1
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot parse"):
        load_job(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps({"version": 2, "views": []}))
    with pytest.raises(InputError, match="version"):
        load_job(tmp_path)
