"""LLFF ``poses_bounds.npy``: a dataset written here in LLFF's layout reads back to the same cameras; the real
photographs of ``ethiopian_head`` (shared data) load with their masks and poses that agree with them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.cameras import Camera, intrinsics, look_at, project
from backend.errors import InputError
from backend.inputs import load_job, load_llff, validate_job

POINT = np.array([[0.1, -0.2, 0.15]])
ORIGINAL = (160, 120)  # the size the poses were made for; the photos here are a quarter of it


def llff_row(camera: Camera, width: int, height: int, focal: float, near=1.0, far=5.0) -> np.ndarray:
    """One poses_bounds row, by LLFF's layout: [down, right, backwards, centre, (h, w, f)] as columns of a 3×5."""
    c2w = np.linalg.inv(camera.world_to_camera)  # OpenCV axes: x right, y down, z forward
    right, down, forward, centre = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
    matrix = np.stack([down, right, -forward, centre, [height, width, focal]], axis=1)
    return np.concatenate([matrix.ravel(), [near, far]])


def write_llff(root, folder="images", masks=True, count=3):
    """Photos at a quarter of ORIGINAL (40×30) named so that sorted order differs from writing order."""
    focal = 150.0
    cams = [look_at(c, (0.0, 0.0, 0.0)) for c in [(3.0, 0.5, 1.0), (-1.0, 2.8, 0.5), (0.2, -3.0, 1.5), (2, 2, 2)]]
    full = [Camera(w2c, intrinsics(focal, focal, 80.0, 60.0), *ORIGINAL) for w2c in cams[:count]]
    names = ["IMG_10.JPG", "IMG_02.jpg", "IMG_07.png", "IMG_11.png"][:count]
    order = np.argsort(names)
    rows = np.stack([llff_row(full[i], *ORIGINAL, focal) for i in order])
    np.save(root / "poses_bounds.npy", rows)
    (root / folder).mkdir()
    if masks:
        (root / "masks").mkdir()
    for cam, name in zip(full, names):
        small = cam.scaled(40, 30)
        u, v = project(small, np.zeros((1, 3)))[0][0]
        jj, ii = np.mgrid[:30, :40] + 0.5
        inside = (ii - u) ** 2 + (jj - v) ** 2 < 8.0**2
        Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(root / folder / name, quality=95)
        if masks:
            Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).save(root / "masks" / f"{name[:6]}.png")
    return [full[i].scaled(40, 30) for i in order], [names[i] for i in order]


def test_round_trip(tmp_path):
    cameras, names = write_llff(tmp_path)
    job = load_job(tmp_path)
    assert [v.name for v in job.views] == [n[:6] for n in names] == ["IMG_02", "IMG_07", "IMG_10"]
    for view, cam in zip(job.views, cameras):
        np.testing.assert_allclose(view.camera.world_to_camera, cam.world_to_camera, atol=1e-9)
        np.testing.assert_allclose(view.camera.K, intrinsics(37.5, 37.5, 20.0, 15.0), atol=1e-12)  # 150 / 4
        np.testing.assert_allclose(project(view.camera, POINT)[0], project(cam, POINT)[0], atol=1e-9)
        u, v = project(view.camera, np.zeros((1, 3)))[0][0]  # the masks' discs sit on the projected origin
        assert view.mask[int(v), int(u)] == 1.0 and view.mask[0, 0] == 0.0
    assert job.source == str(tmp_path / "poses_bounds.npy")
    np.testing.assert_allclose(load_job(tmp_path / "poses_bounds.npy").views[2].camera.K, job.views[2].camera.K)


def test_mask_source_none_and_downscaled_folder(tmp_path):
    """Only images_4/ exists: it is used. mask_source "none" ignores the masks folder (bounds then needed)."""
    write_llff(tmp_path, folder="images_4")
    box = {"centre": [0, 0, 0], "size": 1.0}
    job = load_job(tmp_path, options_override={"mask_source": "none", "bounds": box})
    assert all(v.mask is None for v in job.views) and len(job.views) == 3
    assert load_llff(tmp_path, select=[1]).views[0].name == "IMG_07"


def test_errors(tmp_path):
    write_llff(tmp_path, masks=False)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "images" / "extra.png")
    with pytest.raises(InputError, match="3 poses but .* 4 photos"):
        load_job(tmp_path)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(InputError, match=r"\(N, 17\)"):
        load_job(tmp_path)


def test_photos_must_be_a_scaled_copy(tmp_path):
    write_llff(tmp_path)
    for name in ("IMG_02.jpg",):
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "images" / name)
    with pytest.raises(InputError, match="not a scaled copy") as info:
        load_job(tmp_path)
    assert info.value.view == "IMG_02"


def axes_meeting_point(rows: np.ndarray) -> np.ndarray:
    """The point nearest to every camera's optical axis (least squares), straight from the rows: centre t and
    forward = −c2 (LLFF's backwards column), no loader involved."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for row in rows:
        matrix = row[:15].reshape(3, 5)
        forward, centre = -matrix[:, 2] / np.linalg.norm(matrix[:, 2]), matrix[:, 3]
        P = np.eye(3) - np.outer(forward, forward)
        A += P
        b += P @ centre
    return np.linalg.solve(A, b)


def hull_iou(views, centre: np.ndarray, half_size=1.2, n=64, step=10) -> list[float]:
    """Leave-one-out silhouette IoU: carve an n³ grid around ``centre`` with every other view's mask, project the
    kept points into the left-out view and compare with its mask, both at 1/``step`` resolution."""
    axis = np.linspace(-half_size, half_size, n)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + centre

    def cells(view, points):
        uv, z = project(view.camera, points)
        small = view.mask[::step, ::step] > 0.5
        i = np.floor(uv / step).astype(int)
        ok = (z > 0) & np.all(i >= 0, axis=1) & (i[:, 0] < small.shape[1]) & (i[:, 1] < small.shape[0])
        return i, ok, small

    ious = []
    for left_out, target in enumerate(views):
        keep = np.ones(len(grid), bool)
        for view in views[:left_out] + views[left_out + 1 :]:
            i, ok, small = cells(view, grid)
            inside = np.zeros(len(grid), bool)
            inside[ok] = small[i[ok, 1], i[ok, 0]]
            keep &= inside
        i, ok, small = cells(target, grid[keep])
        hit = np.zeros_like(small)
        hit[i[ok, 1], i[ok, 0]] = True
        ious.append(float((hit & small).sum() / (hit | small).sum()))
    return ious


def test_ethiopian_head(shared_data):
    """66 real photographs (1000², from 4000² originals) with masks; six views about 60° apart load. The focal
    length is scaled to the photos (7543.57 / 4 px), the principal point sits at the centre, masks come from
    masks/. The point the 66 optical axes meet at (the object the photographer circled) projects into every
    view's mask, and a visual hull carved from five views' masks reprojects onto the sixth's.

    Measured leave-one-out IoU 0.82–0.93 (mean 0.88); the same views with each camera turned 90° about its axis
    give 0.47–0.79 (mean 0.65), with the cameras facing backwards 0."""
    root = shared_data / "real" / "ethiopian_head"
    if not (root / "poses_bounds.npy").is_file():
        pytest.skip(f"{root} not found")
    rows = np.load(root / "poses_bounds.npy")
    job = validate_job(load_llff(root, select=[0, 11, 22, 33, 44, 55]))
    centre = axes_meeting_point(rows)
    names = sorted(p.stem for p in (root / "images").iterdir())
    assert [v.name for v in job.views] == [names[i] for i in (0, 11, 22, 33, 44, 55)]
    for view in job.views:
        cam = view.camera
        np.testing.assert_allclose(cam.K, intrinsics(1885.8936, 1885.8936, 500.0, 500.0), atol=1e-3)
        assert view.rgb.shape == (1000, 1000, 3) and view.mask.shape == (1000, 1000)
        (u, v), z = project(cam, centre[None])[0][0], project(cam, centre[None])[1][0]
        assert z > 0 and view.mask[int(v), int(u)] > 0.5, f"{view.name}: the centre projects to ({u:.0f}, {v:.0f})"
    ious = hull_iou(job.views, centre)
    assert min(ious) > 0.78 and np.mean(ious) > 0.83, ious
