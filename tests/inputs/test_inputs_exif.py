"""EXIF orientation: JPEGs written here with an Orientation tag load upright (as Pillow's exif_transpose turns
them), and the camera, made for the stored pixels, turns with them so that a known point stays on its spot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from backend.cameras import Camera, intrinsics, look_at, project
from backend.errors import InputError
from backend.inputs import load_job
from backend.inputs.orientation import pixel_map, upright_array

WIDTH, HEIGHT = 48, 32  # stored size; not square, so 90° turns change it
POINT = np.array([0.35, -0.2, 0.25])


def stored_cameras() -> list[Camera]:
    K = intrinsics(40.0, 42.0, 25.0, 15.0)  # off-centre: a turn must move the principal point
    return [
        Camera(look_at(c, (0.0, 0.0, 0.0), up=(0, 0, 1)), K.copy(), WIDTH, HEIGHT) for c in [(3, 0.5, 1), (-1, 3, 0.5)]
    ]


def spot(width, height, centre, sigma=2.0) -> np.ndarray:
    jj, ii = np.mgrid[:height, :width] + 0.5
    return np.exp(-((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2) / (2 * sigma**2))


def save_jpeg(path, grey: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(path, quality=98, exif=exif)


def write_job(root, orientation, cameras=None, size=None):
    """JPEGs stored WIDTH × HEIGHT with a spot where each stored camera sees POINT, a PNG mask (stored grid, left
    half white), and a job.json whose cameras describe the stored pixels (or ``cameras`` / ``size``)."""
    views = []
    for n, cam in enumerate(stored_cameras()):
        centre = project(cam, POINT[None])[0][0]
        save_jpeg(root / f"v{n}.jpg", spot(WIDTH, HEIGHT, centre), orientation)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[:, : WIDTH // 2] = 255
        Image.fromarray(mask).save(root / f"m{n}.png")
        entry_cam = cameras[n] if cameras else cam
        entry = {"image": f"v{n}.jpg", "mask": f"m{n}.png", "world_to_camera": entry_cam.world_to_camera.tolist()}
        entry["K"] = entry_cam.K.tolist()
        if size:
            entry["width"], entry["height"] = size
        views.append(entry)
    data = {"views": views, "bounds": {"centre": POINT.tolist(), "size": 0.2}}
    (root / "job.json").write_text(json.dumps(data))
    return root / "job.json"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_array_matches_pillow(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    save_jpeg(tmp_path / "a.jpg", rng.random((HEIGHT, WIDTH)), orientation)
    with Image.open(tmp_path / "a.jpg") as image:
        stored = np.asarray(image)
        reference = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(upright_array(stored, orientation), reference)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_turned_photo_turns_its_camera(tmp_path, orientation):
    job = load_job(write_job(tmp_path, orientation))
    for n, (view, stored) in enumerate(zip(job.views, stored_cameras())):
        with Image.open(tmp_path / f"v{n}.jpg") as image:
            upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.float32) / 255
        np.testing.assert_array_equal(view.rgb, upright)
        # The mask file (stored grid) turns with the photo.
        expected_mask = upright_array(np.asarray(Image.open(tmp_path / f"m{n}.png"), np.float32) / 255, orientation)
        np.testing.assert_array_equal(view.mask, expected_mask)
        # The point lands where the stored pixel it lit went: exactly by the map, and on the spot in the pixels.
        A, b = pixel_map(WIDTH, HEIGHT, orientation)
        where = A @ project(stored, POINT[None])[0][0] + b
        uv = project(view.camera, POINT[None])[0][0]
        np.testing.assert_allclose(uv, where, atol=1e-9)
        jj, ii = np.mgrid[: view.rgb.shape[0], : view.rgb.shape[1]] + 0.5
        weight = view.rgb[..., 0] * ((ii - uv[0]) ** 2 + (jj - uv[1]) ** 2 < 36)
        found = np.array([(weight * ii).sum(), (weight * jj).sum()]) / weight.sum()
        assert np.abs(found - uv).max() < 0.1, f"spot at {found}, camera says {uv}"
        assert (view.camera.width, view.camera.height) == view.rgb.shape[1::-1]
        np.testing.assert_allclose(view.camera.centre, stored.centre, atol=1e-12)  # same place, turned
    assert not job.warnings


def test_camera_made_for_the_upright_photo(tmp_path):
    """Tag 6 and a camera sized for the upright photo (32 × 48): the camera is used as it is."""
    turned = [Camera(c.world_to_camera, intrinsics(30.0, 30.0, 16.0, 24.0), HEIGHT, WIDTH) for c in stored_cameras()]
    job = load_job(write_job(tmp_path, 6, cameras=turned, size=(HEIGHT, WIDTH)))
    for view, cam in zip(job.views, turned):
        np.testing.assert_array_equal(view.camera.world_to_camera, cam.world_to_camera)
        np.testing.assert_array_equal(view.camera.K, cam.K)
        assert view.rgb.shape == (WIDTH, HEIGHT, 3)


def test_camera_that_fits_neither_size(tmp_path):
    with pytest.raises(InputError, match="EXIF orientation 6") as info:
        load_job(write_job(tmp_path, 6, size=(40, 40)))
    assert "48x32 as stored (32x48 upright" in info.value.message and info.value.view == "v0"


def test_mirrored_photo_stays_as_stored(tmp_path):
    job = load_job(write_job(tmp_path, 2))
    with Image.open(tmp_path / "v0.jpg") as image:
        stored = np.asarray(image.convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(job.views[0].rgb, stored)
    np.testing.assert_array_equal(job.views[0].camera.K, stored_cameras()[0].K)
    assert len(job.warnings) == 2 and "mirrors the photo" in job.warnings[0]
