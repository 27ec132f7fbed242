"""Lens distortion checked against OpenCV (a test-only reference): the point mapping, the resampling grid, the
choice of the pinhole camera, and photos whose bright spot OpenCV placed, undistorted directly and through the
transforms.json importer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.cameras import look_at, project, w2c_to_opengl_c2w
from backend.errors import InputError
from backend.inputs import load_job
from backend.inputs.images import Pixels
from backend.inputs.undistort import (
    MAX_ZOOM,
    Distortion,
    source_pixels,
    undistort_pixels,
    undistorted_K,
)

cv2 = pytest.importorskip("cv2")  # a dependency of the backend (opencv-python-headless)

WIDTH, HEIGHT = 640, 480
K = np.array([[420.0, 0.0, 323.5], [0.0, 415.0, 236.0], [0.0, 0.0, 1.0]])
LENSES = {
    "barrel": Distortion("opencv", (-0.28, 0.09, -0.012), (0.0008, -0.0011)),
    "pincushion": Distortion("opencv", (0.12, 0.02), (-0.0005, 0.0007)),
    "rational": Distortion("opencv", (0.4, -0.1, 0.01, 0.5, -0.05, 0.02), (0.0004, 0.0003)),
    "fisheye": Distortion("fisheye", (0.08, -0.03, 0.006, -0.0008)),
}
CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
TOLERANCE_PX = 0.05
"""Largest allowed difference from OpenCV. Measured: 2e-13 px through cv2.undistortPoints (33 × 25 grid, every
lens: the same formulas in float64, OpenCV iterating to convergence); the spot test 0.0008–0.023 px (bilinear
resampling of a 1.5 px Gaussian moved 10–26 px by the lens)."""


def opencv_undistort(lens: Distortion, distorted: np.ndarray, new_K: np.ndarray) -> np.ndarray:
    """Distorted photo pixels → pixels of the pinhole camera ``new_K``, by OpenCV."""
    points = distorted.reshape(-1, 1, 2).astype(np.float64)
    D = lens.opencv_coefficients()
    if lens.model == "fisheye":
        out = cv2.fisheye.undistortPoints(points, K, D, R=np.eye(3), P=new_K, criteria=CRITERIA)
    else:
        out = cv2.undistortPointsIter(points, K, D, np.eye(3), new_K, CRITERIA)
    return out.reshape(-1, 2)


def opencv_distort(lens: Distortion, camera_points: np.ndarray) -> np.ndarray:
    """Camera-space points (N, 3) → distorted photo pixels, by OpenCV's projectPoints."""
    points = camera_points.reshape(-1, 1, 3).astype(np.float64)
    zero = np.zeros(3)
    D = lens.opencv_coefficients()
    if lens.model == "fisheye":
        out, _ = cv2.fisheye.projectPoints(points, zero, zero, K, D)
    else:
        out, _ = cv2.projectPoints(points, zero, zero, K, D)
    return out.reshape(-1, 2)


@pytest.mark.parametrize("name", sorted(LENSES))
def test_mapping_matches_opencv_undistort_points(name):
    """Our map (pinhole pixel → photo pixel), inverted by cv2.undistortPoints, gives the pinhole pixel back."""
    lens = LENSES[name]
    new_K = undistorted_K(K, lens, WIDTH, HEIGHT)
    v, u = np.meshgrid(np.linspace(0.5, HEIGHT - 0.5, 25), np.linspace(0.5, WIDTH - 0.5, 33), indexing="ij")
    source = source_pixels(K, lens, new_K, u, v)
    assert np.all(np.isfinite(source))
    back = opencv_undistort(lens, source.reshape(-1, 2), new_K)
    error = np.abs(back - np.stack([u.ravel(), v.ravel()], axis=-1)).max()
    assert error < TOLERANCE_PX, f"{name}: max {error:.3g} px"


@pytest.mark.parametrize("name", sorted(LENSES))
def test_resampling_grid_matches_opencv_map(name):
    """The photo pixel each output pixel centre samples equals cv2.initUndistortRectifyMap's, once OpenCV's
    integer pixel centres are shifted to this project's corner convention (+0.5)."""
    lens = LENSES[name]
    new_K = undistorted_K(K, lens, WIDTH, HEIGHT)
    shift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])  # corner → centre convention
    K_cv, new_cv = shift @ K, shift @ new_K
    D = lens.opencv_coefficients()
    if lens.model == "fisheye":
        map_x, map_y = cv2.fisheye.initUndistortRectifyMap(K_cv, D, np.eye(3), new_cv, (WIDTH, HEIGHT), cv2.CV_32FC1)
    else:
        map_x, map_y = cv2.initUndistortRectifyMap(K_cv, D, None, new_cv, (WIDTH, HEIGHT), cv2.CV_32FC1)
    v, u = np.meshgrid(np.arange(HEIGHT) + 0.5, np.arange(WIDTH) + 0.5, indexing="ij")
    ours = source_pixels(K, lens, new_K, u, v)
    error = np.abs(ours - (np.stack([map_x, map_y], axis=-1) + 0.5)).max()
    assert error < 2e-3, f"{name}: max {error:.3g} px"  # OpenCV's map is float32: measured 4.6e-5 px


def ring_inside(new_K, lens) -> bool:
    cols, rows = np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5
    u = np.concatenate([cols, cols, np.full(HEIGHT, 0.5), np.full(HEIGHT, WIDTH - 0.5)])
    v = np.concatenate([np.full(WIDTH, 0.5), np.full(WIDTH, HEIGHT - 0.5), rows, rows])
    p = source_pixels(K, lens, new_K, u, v)
    return bool(np.all((p[:, 0] >= 0) & (p[:, 0] <= WIDTH) & (p[:, 1] >= 0) & (p[:, 1] <= HEIGHT)))


def test_pinhole_camera_choice():
    """Barrel and fisheye keep K (every pixel already sees the photo); pincushion zooms in just enough."""
    for name in ("barrel", "fisheye"):
        np.testing.assert_array_equal(undistorted_K(K, LENSES[name], WIDTH, HEIGHT), K)
    lens = LENSES["pincushion"]
    new_K = undistorted_K(K, lens, WIDTH, HEIGHT)
    s = new_K[0, 0] / K[0, 0]
    assert 1.0 < s < MAX_ZOOM
    np.testing.assert_allclose(new_K[1, 1] / K[1, 1], s)
    np.testing.assert_array_equal(new_K[:2, 2], K[:2, 2])
    assert ring_inside(new_K, lens)
    smaller = new_K.copy()
    smaller[:2, :2] /= 1.001
    assert not ring_inside(smaller, lens)


def spot_photo(lens: Distortion, camera_point: np.ndarray, sigma=1.5) -> np.ndarray:
    """(H, W) Gaussian spot where OpenCV projects ``camera_point`` through the distorted lens."""
    centre = opencv_distort(lens, camera_point[None])[0]
    jj, ii = np.mgrid[:HEIGHT, :WIDTH] + 0.5
    return np.exp(-((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def centroid(image: np.ndarray, near: np.ndarray, radius=8) -> np.ndarray:
    jj, ii = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    window = (np.abs(ii - near[0]) < radius) & (np.abs(jj - near[1]) < radius)
    weight = np.where(window, image, 0.0)
    return np.array([(weight * ii).sum(), (weight * jj).sum()]) / weight.sum()


@pytest.mark.parametrize("name", sorted(LENSES))
def test_undistorted_photo_puts_the_spot_on_the_pinhole_projection(name):
    """A spot OpenCV drew through the distorted lens lands, after undistortion, where the new pinhole camera
    projects the same 3D point; mask and depth follow, and no pixel is blank."""
    lens = LENSES[name]
    point = np.array([0.55, -0.38, 1.0]) * 2.0  # well off-axis: the distortion moves it by several pixels
    spot = spot_photo(lens, point)
    depth = np.full((HEIGHT, WIDTH), 2.0, np.float32)
    pixels = Pixels(np.repeat(spot[..., None], 3, axis=2), np.ones((HEIGHT, WIDTH), np.float32), depth)
    result = undistort_pixels(pixels, K, lens)
    expected = result.K[:2, :2] @ (point[:2] / point[2]) + result.K[:2, 2]
    found = centroid(result.pixels.rgb[..., 0], expected)
    moved = np.abs(opencv_distort(lens, point[None])[0] - (K[:2, :2] @ (point[:2] / point[2]) + K[:2, 2])).max()
    assert moved > 3.0  # the check would catch a lens left uncorrected
    assert np.abs(found - expected).max() < TOLERANCE_PX, f"{name}: {found} vs {expected}"
    assert result.outside == 0
    assert result.pixels.mask.min() > 0.999
    np.testing.assert_array_equal(result.pixels.depth, depth)


def test_folded_lens_rays_are_masked_out():
    """A strong barrel term makes the model fold back (r_d stops growing at r² = −1 / (3 k1)); rays past that are
    unseen. The chosen camera zooms in to avoid them; forcing the old K leaves them at mask 0."""
    lens = Distortion("opencv", (-0.1,))  # folds at r = 1.83
    wide = np.array([[200.0, 0.0, 320.0], [0.0, 200.0, 240.0], [0.0, 0.0, 1.0]])  # corners at r = 2
    pixels = Pixels(np.ones((HEIGHT, WIDTH, 3), np.float32), np.ones((HEIGHT, WIDTH), np.float32), None)
    chosen = undistort_pixels(pixels, wide, lens)
    assert chosen.outside == 0
    fold = np.sqrt(1 / (3 * 0.1))
    corner = np.hypot(319.5, 239.5) / chosen.K[0, 0]  # the corner pixel's centre
    assert fold * 0.99 < corner <= fold * 1.001  # zoomed in just past the fold, no further
    forced = undistort_pixels(pixels, wide, lens, new_K=wide)
    assert forced.outside > 0
    assert forced.pixels.mask[0, 0] == 0.0 and forced.pixels.mask[240, 320] == 1.0
    assert int((forced.pixels.mask == 0).sum()) == forced.outside


TRANSFORMS_LENSES = {
    "nerfstudio OPENCV": ({"camera_model": "OPENCV", "k1": -0.2, "k2": 0.04, "p1": 0.002, "p2": -0.003}, None),
    "nerfstudio OPENCV_FISHEYE": ({"camera_model": "OPENCV_FISHEYE", "k1": 0.06, "k2": -0.02, "k3": 0.004}, None),
    "instant-ngp is_fisheye": ({"is_fisheye": True, "k1": 0.06, "k2": -0.02, "k3": 0.004, "k4": -0.0005}, None),
    "k4 on a pinhole model": ({"camera_model": "OPENCV", "k1": -0.2, "k4": 0.01}, "k4"),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS_LENSES))
def test_transforms_importer_removes_distortion(tmp_path, name):
    """transforms.json with lens coefficients: the spot OpenCV drew lands where the loaded camera projects."""
    keys, error = TRANSFORMS_LENSES[name]
    width, height, f = 192, 128, 140.0
    photo_K = np.array([[f, 0.0, 96.5], [0.0, f, 62.0], [0.0, 0.0, 1.0]])
    fisheye = keys.get("camera_model") == "OPENCV_FISHEYE" or keys.get("is_fisheye")
    coefficients = [keys.get(k, 0.0) for k in ("k1", "k2", "k3", "k4")] if fisheye else None
    if not fisheye:
        coefficients = [keys.get("k1", 0.0), keys.get("k2", 0.0), keys.get("p1", 0.0), keys.get("p2", 0.0)]
    point = np.array([0.45, -0.3, 1.0]) * 3.2
    project_cv = cv2.fisheye.projectPoints if fisheye else cv2.projectPoints
    spot = project_cv(point.reshape(1, 1, 3), np.zeros(3), np.zeros(3), photo_K, np.array(coefficients))[0].reshape(2)
    jj, ii = np.mgrid[:height, :width] + 0.5
    image = np.exp(-((ii - spot[0]) ** 2 + (jj - spot[1]) ** 2) / 2)
    frames, worlds = [], []
    for n, centre in enumerate([(3, 0.5, 1), (-1, 2.8, 0.5)]):
        w2c = look_at(centre, (0, 0, 0))
        Image.fromarray((image * 65535).round().astype(np.uint16)).save(tmp_path / f"f{n}.png")
        frames.append({"file_path": f"f{n}.png", "transform_matrix": w2c_to_opengl_c2w(w2c).tolist()})
        worlds.append((np.linalg.inv(w2c) @ np.append(point, 1.0))[:3])
    data = {"fl_x": f, "fl_y": f, "cx": 96.5, "cy": 62.0, "w": width, "h": height, **keys, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    box = {"bounds": {"centre": [0, 0, 0], "size": 1.0}}
    if error:
        with pytest.raises(InputError, match=error):
            load_job(tmp_path, options_override=box)
        return
    job = load_job(tmp_path, options_override=box)
    assert not job.warnings
    for view, world in zip(job.views, worlds):
        expected = project(view.camera, world[None])[0][0]
        found = centroid(view.rgb[..., 0], expected)
        assert np.abs(found - expected).max() < TOLERANCE_PX, f"{name}: {found} vs {expected}"
