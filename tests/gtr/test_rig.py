"""The GTR canonical frame: official rig, world → canonical similarity, square generator views, rig warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import Camera, focal_from_fov, intrinsics, look_at, orbit_cameras, project, ray_bundle
from backend.errors import InputError
from backend.gtr.rig import (
    RigConfig,
    canonical_frame,
    official_rig_cameras,
    require_masks,
    rig_warnings,
    square_view,
)
from backend.mesh import Mesh
from backend.views import Bounds, View

# ---------------------------------------------------------------------------------------------------------------
# Official rig


def test_official_rig_cameras_match_the_fact_sheet():
    cams = official_rig_cameras(512)
    assert len(cams) == 6
    np.testing.assert_allclose(cams[0].centre, [1.879, 1.368, 3.255], atol=2e-3)
    np.testing.assert_allclose(cams[1].centre, [3.939, -0.695, 0.0], atol=2e-3)
    f_px = 512 / (2 * np.tan(np.radians(15.0)))
    for cam in cams:
        assert (cam.width, cam.height) == (512, 512)
        np.testing.assert_allclose(cam.K, [[f_px, 0, 256], [0, f_px, 256], [0, 0, 1]], atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(cam.centre), 4.0, atol=1e-12)
        # The fact sheet's construction: forward to the origin, right = (0, -1, 0) × forward, down = forward × right.
        c = cam.centre
        forward = -c / np.linalg.norm(c)
        right = np.cross([0.0, -1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        np.testing.assert_allclose(cam.camera_to_world[:3, :3], np.stack([right, down, forward], 1), atol=1e-12)
        # The origin projects to the image centre and world +Y points up in the image.
        uv, z = project(cam, np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))
        np.testing.assert_allclose(uv[0], [256.0, 256.0], atol=1e-9)
        assert uv[1, 1] < uv[0, 1] and z[0] == pytest.approx(4.0)


def test_official_rig_gives_no_warnings():
    assert rig_warnings(official_rig_cameras(512), RigConfig()) == []
    assert rig_warnings(official_rig_cameras(64)) == []


def _y_up_ring(count, distance, fov_degrees, elevation_degrees, size=64):
    """Cameras on a ring about +Y looking at the origin (the canonical frame)."""
    f = focal_from_fov(np.radians(fov_degrees), size)
    K = intrinsics(f, f, size / 2, size / 2)
    cams = []
    for n in range(count):
        a, e = np.radians(360.0 * n / count), np.radians(elevation_degrees)
        centre = distance * np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
        cams.append(Camera(look_at(centre, np.zeros(3), up=(0.0, 1.0, 0.0)), K.copy(), size, size))
    return cams


def test_far_wide_high_crowded_rig_warns_about_each_departure():
    warnings = rig_warnings(_y_up_ring(20, distance=10.0, fov_degrees=60.0, elevation_degrees=70.0), RigConfig())
    text = "\n".join(warnings)
    assert len(warnings) == 4, text
    assert any("20 views" in w and "trained on 6" in w for w in warnings)
    assert any("distance" in w and "10" in w and "smaller" in w for w in warnings)
    assert any("field of view" in w and "60°" in w for w in warnings)
    assert any("elevation" in w and "70°" in w for w in warnings)
    assert all("--method fit" in w for w in warnings)
    assert "not aimed" not in text and "gap" not in text


def test_orthographic_off_axis_and_one_sided_cameras_warn():
    cams = official_rig_cameras(64)
    ortho = Camera(cams[0].world_to_camera, intrinsics(20.0, 20.0, 32, 32), 64, 64, orthographic=True)
    # Turn camera 1 by 30° about its own vertical axis: it no longer looks at the origin.
    turn = np.eye(4)
    t = np.radians(30.0)
    turn[:3, :3] = [[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]
    skewed = Camera(turn @ cams[1].world_to_camera, cams[1].K, 64, 64)
    warnings = rig_warnings([ortho, skewed, *cams[2:]], names=[f"img{n}" for n in range(6)])
    assert any("orthographic" in w and "img0" in w for w in warnings)
    aimed = [w for w in warnings if "not aimed" in w]
    assert len(aimed) == 1 and "img1 (30°)" in aimed[0]

    front = [c for c in _y_up_ring(12, 4.0, 30.0, 10.0) if c.centre[2] > 0.5][:6]  # azimuths -60° … 60°
    assert any("gap" in w for w in rig_warnings(front))


# ---------------------------------------------------------------------------------------------------------------
# World (Z-up) → canonical frame


BOUNDS = Bounds(centre=np.array([1.5, -2.0, 0.7]), size=np.array([0.8, 1.2, 2.0]))


def _z_up_views(count=6, size=48, masks=None):
    cams = orbit_cameras(count, radius=6.0, fov_degrees=30.0, size=size, elevations_degrees=(20.0, -10.0),
                         azimuth_offset_degrees=15.0, target=BOUNDS.centre)  # fmt: skip
    views = []
    for n, cam in enumerate(cams):
        mask = None if masks is None else masks(cam)
        views.append(View(f"v{n}", cam, np.zeros((size, size, 3), np.float32), mask, None))
    return views


def test_z_up_scene_maps_into_the_canonical_frame():
    views = _z_up_views()
    config = RigConfig(up_axis="z", object_extent=0.85)
    frame = canonical_frame(views, BOUNDS, config, "cpu")
    assert frame.scale == pytest.approx(0.85 / 1.0)
    assert np.linalg.det(frame.rotation) == pytest.approx(1.0)

    # World up (+Z) becomes canonical up (+Y); the bounds fill ±object_extent along their largest side.
    up = frame.to_canonical_points(np.stack([BOUNDS.centre, BOUNDS.centre + [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(up[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(up[1] / np.linalg.norm(up[1]), [0.0, 1.0, 0.0], atol=1e-12)
    corners = frame.to_canonical_points(BOUNDS.corners())
    assert np.abs(corners).max() == pytest.approx(0.85)
    np.testing.assert_allclose(np.abs(corners).max(0), [0.34, 0.85, 0.51], atol=1e-12)  # x, z (up), -y

    # Projections agree through the original and the canonical cameras; depth scales with the frame.
    rng = np.random.default_rng(0)
    world = BOUNDS.minimum + rng.random((50, 3)) * BOUNDS.size
    canonical = frame.to_canonical_points(world)
    for view in views:
        uv, z = project(view.camera, world)
        moved = frame.view_to_canonical(view).camera
        uv_c, z_c = project(moved, canonical)
        np.testing.assert_allclose(uv_c, uv, atol=1e-9)
        np.testing.assert_allclose(z_c, frame.scale * z, rtol=1e-12)
        np.testing.assert_allclose(frame.camera_to_canonical(view.camera).world_to_camera, moved.world_to_camera)
        # The Z-up orbit keeps its elevation about the new up axis, still aimed at the origin.
        np.testing.assert_allclose(np.linalg.norm(moved.centre), 6.0 * frame.scale, rtol=1e-12)
    elevations = [np.degrees(np.arcsin(frame.camera_to_canonical(v.camera).centre[1] / 5.1)) for v in views]
    np.testing.assert_allclose(elevations, [20.0, -10.0] * 3, atol=1e-9)
    cams = [frame.camera_to_canonical(v.camera) for v in views]
    assert [w for w in rig_warnings(cams, config) if "elevation" in w or "aimed" in w or "gap" in w] == []

    # world_from_canonical inverts to_canonical_points, also applied to a mesh (winding kept: det > 0).
    back = canonical @ frame.world_from_canonical[:3, :3].T + frame.world_from_canonical[:3, 3]
    np.testing.assert_allclose(back, world, atol=1e-12)
    np.testing.assert_allclose(frame.to_world_points(canonical), world, atol=1e-12)
    np.testing.assert_allclose(frame.world_from_canonical @ frame.canonical_from_world, np.eye(4), atol=1e-12)
    mesh = Mesh(torch.tensor(canonical[:3], dtype=torch.float32), torch.tensor([[0, 1, 2]]))
    moved_mesh = mesh.transformed(frame.world_from_canonical)
    np.testing.assert_allclose(moved_mesh.vertices.numpy(), world[:3], atol=1e-5)
    assert moved_mesh.faces.tolist() == [[0, 1, 2]]


def test_y_up_frame_has_no_rotation():
    frame = canonical_frame([], BOUNDS, RigConfig(up_axis="y", object_extent=0.5), "cpu")
    np.testing.assert_allclose(frame.rotation, np.eye(3))
    np.testing.assert_allclose(frame.to_canonical_points(BOUNDS.maximum[None]), [[0.2, 0.3, 0.5]], atol=1e-12)
    with pytest.raises(ValueError, match="up_axis"):
        RigConfig(up_axis="x")


def _sphere_mask(camera: Camera, centre, radius) -> np.ndarray:
    """1 where the pixel-centre ray passes within ``radius`` of ``centre``."""
    origins, dirs = ray_bundle(camera)
    o, d = origins.double().numpy(), dirs.double().numpy()
    to_centre = np.asarray(centre) - o
    along = (to_centre * d).sum(-1, keepdims=True)
    miss = np.linalg.norm(to_centre - along * d, axis=-1)
    return (miss < radius).astype(np.float32)


def test_bounds_from_masks_when_the_job_gives_none():
    radius = 0.6
    views = _z_up_views(size=40, masks=lambda cam: _sphere_mask(cam, BOUNDS.centre, radius))
    frame = canonical_frame(views, None, RigConfig(hull_resolution=32), "cpu")
    np.testing.assert_allclose(frame.centre, BOUNDS.centre, atol=0.1)
    assert 0.85 / (1.5 * radius) < frame.scale < 0.85 / radius  # a 6-view hull box is looser than the sphere

    views[3].mask = None
    with pytest.raises(InputError, match="v3"):
        canonical_frame(views, None, RigConfig(), "cpu")
    canonical_frame(views, BOUNDS, RigConfig(), "cpu")  # bounds given: masks are not needed for the frame


# ---------------------------------------------------------------------------------------------------------------
# Square generator views


def _gradient_view(width, height, cx, cy, disc_centre, disc_radius, name="wide"):
    """Colour linear in the pixel position, a disc-shaped mask, a camera with principal point (cx, cy)."""
    jj, ii = np.mgrid[:height, :width] + 0.5
    rgb = np.stack([ii / width, jj / height, np.full_like(ii, 0.25)], -1).astype(np.float32)
    mask = ((ii - disc_centre[0]) ** 2 + (jj - disc_centre[1]) ** 2 < disc_radius**2).astype(np.float32)
    K = intrinsics(50.0, 50.0, cx, cy)
    cam = Camera(look_at([0.0, -4.0, 0.0], [0.0, 0.0, 0.0]), K, width, height)
    return View(name, cam, rgb, mask, None)


def _points_seen_at(camera: Camera, uv: np.ndarray, depth: float = 4.0) -> np.ndarray:
    """World points that ``camera`` sees at pixel positions ``uv`` (N, 2)."""
    xy = (uv - camera.K[:2, 2]) / np.diag(camera.K)[:2]
    local = np.column_stack([xy * depth, np.full(len(uv), depth), np.ones(len(uv))])
    return (local @ camera.camera_to_world.T)[:, :3]


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-pixel values of ``image`` at pixel positions ``uv`` (corner convention)."""
    cols = np.clip(np.floor(uv[:, 0]).astype(int), 0, image.shape[1] - 1)
    rows = np.clip(np.floor(uv[:, 1]).astype(int), 0, image.shape[0] - 1)
    return image[rows, cols]


@pytest.mark.parametrize("size", [20, 80])
def test_square_view_crops_background_and_keeps_content(size):
    view = _gradient_view(60, 40, cx=30.0, cy=20.0, disc_centre=(35.0, 22.0), disc_radius=8.0)
    out = square_view(view, size)
    assert out.rgb.shape == (size, size, 3) and out.mask.shape == (size, size)
    assert (out.camera.width, out.camera.height) == (size, size)
    # The 40 × 40 centred square already holds the disc: 10 background columns cropped on each side.
    scale = size / 40
    expected_K = intrinsics(50.0 * scale, 50.0 * scale, (30.0 - 10.0) * scale, 20.0 * scale)
    np.testing.assert_allclose(out.camera.K, expected_K, atol=1e-12)
    np.testing.assert_allclose(out.camera.world_to_camera, view.camera.world_to_camera)

    # 3-D points project to the same image content: positions map by the crop and the scale.
    uv = np.array([[33.0, 21.0], [38.5, 25.0], [30.2, 17.4], [36.0, 19.0]])
    points = _points_seen_at(view.camera, uv)
    uv_before, _ = project(view.camera, points)
    uv_after, _ = project(out.camera, points)
    np.testing.assert_allclose(uv_before, uv, atol=1e-9)
    np.testing.assert_allclose(uv_after, (uv - [10.0, 0.0]) * scale, atol=1e-9)
    np.testing.assert_allclose(_sample(out.rgb, uv_after), _sample(view.rgb, uv), atol=0.03)
    assert (_sample(out.mask, uv_after) > 0.9).all()
    assert out.mask.sum() / scale**2 == pytest.approx(view.mask.sum(), rel=0.02)


def test_square_view_pads_around_an_off_centre_principal_point():
    view = _gradient_view(60, 40, cx=12.0, cy=20.0, disc_centre=(40.0, 22.0), disc_radius=6.0)
    out = square_view(view, 64)
    # The disc reaches x = 46: a 68-pixel square centred on (12, 20), i.e. 22 pixels of padding on the left.
    x0, y0, side = -22, -14, 68
    np.testing.assert_allclose(out.camera.K[:2, 2], [(12.0 - x0) * 64 / side, (20.0 - y0) * 64 / side], atol=1e-12)
    np.testing.assert_allclose(out.camera.K[:2, 2], 32.0, atol=1e-12)  # principal point at the centre
    np.testing.assert_allclose(out.camera.K[0, 0], 50.0 * 64 / side, atol=1e-12)

    uv = np.array([[40.0, 22.0], [36.0, 20.5], [43.5, 24.0]])
    points = _points_seen_at(view.camera, uv, depth=3.0)
    uv_after, _ = project(out.camera, points)
    np.testing.assert_allclose(uv_after, (uv - [x0, y0]) * 64 / side, atol=1e-9)
    np.testing.assert_allclose(_sample(out.rgb, uv_after), _sample(view.rgb, uv), atol=0.03)
    assert out.mask.sum() * (side / 64) ** 2 == pytest.approx(view.mask.sum(), rel=0.03)  # no object pixel lost

    # Padding (left of the image, above and below it): mask 0 and white.
    pad_left = out.camera.K[0, 2] - 12.0 * 64 / side  # the image's left edge in output pixels
    np.testing.assert_array_equal(out.mask[:, : int(pad_left) - 1], 0.0)
    np.testing.assert_allclose(out.rgb[:, : int(pad_left) - 1], 1.0, atol=1e-6)
    np.testing.assert_array_equal(out.mask[:10], 0.0)
    np.testing.assert_allclose(out.rgb[-10:], 1.0, atol=1e-6)
    # Inside the image but off the object: composited on white too.
    assert _sample(out.rgb, np.array([[(5.0 - x0) * 64 / side, (5.0 - y0) * 64 / side]])) == pytest.approx(1.0)


def test_square_view_of_a_square_centred_image_only_resizes():
    view = _gradient_view(32, 32, cx=16.0, cy=16.0, disc_centre=(16.0, 16.0), disc_radius=10.0)
    view.depth = np.full((32, 32), 2.5, np.float32)
    out = square_view(view, 32)
    np.testing.assert_allclose(out.camera.K, view.camera.K)
    np.testing.assert_array_equal(out.mask, view.mask)
    np.testing.assert_allclose(out.rgb, view.rgb * view.mask[..., None] + (1 - view.mask[..., None]), atol=1e-6)
    np.testing.assert_array_equal(square_view(view, 16).depth, 2.5)


def test_masks_are_required():
    views = [_gradient_view(8, 8, 4.0, 4.0, (4.0, 4.0), 2.0, name=n) for n in ("front", "back")]
    require_masks(views)
    views[1].mask = None
    with pytest.raises(InputError, match="'back'") as error:
        require_masks(views)
    assert "GTR" in str(error.value) and "alpha" in str(error.value) and error.value.index == 1
    with pytest.raises(InputError, match="'back'"):
        square_view(views[1], 16)


def test_square_view_rejects_a_wild_principal_point():
    view = _gradient_view(60, 40, cx=3000.0, cy=20.0, disc_centre=(30.0, 20.0), disc_radius=5.0, name="odd")
    with pytest.raises(InputError, match="'odd'.*principal point"):
        square_view(view, 64)
