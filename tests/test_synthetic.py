import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.cameras import focal_from_fov, opengl_c2w_to_w2c, orbit_cameras, project
from backend.colour import linear_to_srgb, srgb_to_linear
from backend.inputs.transforms import load_transforms
from backend.metrics import sample_surface
from backend.synthetic import (
    OBJECT_BOTTOM_Z,
    ROOM_RADIUS,
    TABLE_RADIUS,
    TABLE_Z,
    SceneConfig,
    make_scene,
    render_view,
    room_colour,
    scene_sdf,
    table_colour,
    write_scene_as_transforms,
)

SIZE = 64
CONFIG = SceneConfig(size=SIZE, train_views=8, test_views=2, grid=96)
BACKDROP = SceneConfig(size=32, train_views=4, test_views=2, grid=32, backdrop=True)


@pytest.fixture(scope="module")
def scene():
    return make_scene(CONFIG)


@pytest.fixture(scope="module")
def backdrop_scene():
    return make_scene(BACKDROP)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _backproject(view):
    """World points and colours of the pixels with known depth."""
    j, i = np.nonzero(view.depth > 0)
    cam = view.camera
    z = view.depth[j, i].astype(np.float64)
    x = (i + 0.5 - cam.K[0, 2]) / cam.K[0, 0] * z
    y = (j + 0.5 - cam.K[1, 2]) / cam.K[1, 1] * z
    c2w = cam.camera_to_world
    pts = np.stack([x, y, z], 1) @ c2w[:3, :3].T + c2w[:3, 3]
    return pts, j, i


def _corners(img, uv):
    """The 4 pixels around each (u, v) (pixel-centre bilinear footprint) and the bilinear weights."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    vals = np.stack([img[y0, x0], img[y0, x0 + 1], img[y0 + 1, x0], img[y0 + 1, x0 + 1]], 1)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return vals, w


def test_shapes_and_dtypes(scene):
    assert len(scene.train) == 8 and len(scene.test) == 2
    names = [v.name for v in scene.train + scene.test]
    assert len(set(names)) == len(names)
    for v in scene.train + scene.test:
        assert v.rgb.shape == (SIZE, SIZE, 3) and v.rgb.dtype == np.float32
        assert v.mask.shape == (SIZE, SIZE) and v.mask.dtype == np.float32
        assert v.depth.shape == (SIZE, SIZE) and v.depth.dtype == np.float32
        assert v.rgb.min() >= 0 and v.rgb.max() <= 1
        assert (v.camera.width, v.camera.height) == (SIZE, SIZE)
        assert np.linalg.norm(v.camera.centre) == pytest.approx(CONFIG.radius)
    assert scene.gt_vertices.dtype == np.float32 and scene.gt_faces.dtype == np.int64
    # held-out cameras are not training cameras
    train_c = np.array([v.camera.centre for v in scene.train])
    for v in scene.test:
        assert np.linalg.norm(train_c - v.camera.centre, axis=1).min() > 0.3


def test_masks_interior_exterior_and_soft_edges(scene):
    for v in scene.train + scene.test:
        m = v.mask
        assert set(np.unique(m)).issubset({0.0, 0.25, 0.5, 0.75, 1.0})  # 2×2 supersampled coverage
        assert (m == 1).sum() > 0.08 * SIZE * SIZE  # a sizeable object
        assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
        soft = (m > 0) & (m < 1)
        assert soft.sum() > 10
        # fractional pixels sit on the silhouette: next to both an empty and a full pixel (within 1 px)
        near_empty = _dilate(m == 0)
        near_full = _dilate(m == 1)
        assert (near_empty[soft] | near_full[soft]).mean() > 0.95
        assert near_empty[soft].mean() > 0.9
        # background colour where empty, depth only where fully covered
        assert np.allclose(v.rgb[m == 0], scene.background)
        assert np.all(m[v.depth > 0] == 1)


def test_gt_mesh_is_closed_genus_one_on_the_surface(scene):
    v, f = scene.gt_vertices, scene.gt_faces
    assert np.abs(v).max() < 0.95
    spacing = 2.0 / (CONFIG.grid - 1)
    sdf = scene_sdf(torch.from_numpy(v)).numpy()
    assert np.abs(sdf).max() < 0.1 * spacing
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # closed 2-manifold
    assert len(v) - len(counts) + len(f) == 0  # Euler characteristic 0: genus 1 (the handle's hole)
    # outward winding: face normals point along the SDF gradient
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    c = torch.from_numpy(tri.mean(1))
    outward = scene_sdf(c + torch.from_numpy(n / np.linalg.norm(n, axis=1, keepdims=True)) * 1e-2) > scene_sdf(c)
    assert outward.float().mean() > 0.99


def test_depth_points_lie_on_the_surface(scene):
    pts, _, _ = _backproject(scene.train[0])
    assert len(pts) > 100
    assert np.abs(scene_sdf(torch.from_numpy(pts).float()).numpy()).max() < 5e-3


def test_silhouettes_match_projected_gt_surface(scene):
    pts, _ = sample_surface(scene.gt_vertices, scene.gt_faces, 20000, seed=1)
    for v in scene.train + scene.test:
        uv, z = project(v.camera, pts)
        assert np.all(z > 0)
        px = np.floor(uv).astype(int)
        assert px.min() >= 0 and px.max() < SIZE
        inside = _dilate(v.mask > 0.5)
        assert inside[px[:, 1], px[:, 0]].mean() >= 0.99
        # and the other way: every fully covered pixel is hit by some projected surface point (within 1 px)
        hits = np.zeros((SIZE, SIZE), bool)
        hits[px[:, 1], px[:, 0]] = True
        assert _dilate(hits)[v.mask == 1].mean() >= 0.99


def test_colours_are_view_independent(scene):
    """A surface point (from a depth pixel of view a) has the same colour in every other view b that sees it.

    Pixels integrate a footprint that differs between views, so only texture-smooth places are compared: the
    3×3 neighbourhood in a and the 4 bilinear corners in b vary by less than ``smooth_limit``."""
    smooth_limit = 0.1
    views = scene.train + scene.test
    pairs, diffs = 0, []
    for a in views:
        pts, j, i = _backproject(a)
        pad = np.pad(a.rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
        shifts = [(dj, di) for dj in (0, 1, 2) for di in (0, 1, 2)]
        stack = np.stack([pad[dj : dj + SIZE, di : di + SIZE] for dj, di in shifts])
        keep = ((stack.max(0) - stack.min(0)).max(-1) < smooth_limit)[j, i]
        pts, colour_a = pts[keep], a.rgb[j[keep], i[keep]]
        for b in views:
            if b is a:
                continue
            uv, z = project(b.camera, pts)
            ok = (uv > 1.5).all(1) & (uv < SIZE - 1.5).all(1)
            depth_b, _ = _corners(b.depth, uv[ok])
            visible = (depth_b > 0).all(1) & (np.abs(depth_b - z[ok, None]) < 0.02).all(1)
            rgb_b, w = _corners(b.rgb, uv[ok][visible])
            smooth_b = (rgb_b.max(1) - rgb_b.min(1)).max(-1) < smooth_limit
            if smooth_b.sum() < 10:
                continue
            colour_b = (rgb_b * w[..., None]).sum(1)
            diffs.append(np.abs(colour_b - colour_a[ok][visible]).max(1)[smooth_b])
            pairs += 1
    assert pairs >= 10
    d = np.concatenate(diffs)
    assert len(d) > 300
    assert np.median(d) < 0.006
    assert (d < 0.02).mean() > 0.98


def test_write_scene_as_transforms_round_trip(scene, tmp_path):
    out = write_scene_as_transforms(scene, tmp_path / "demo")
    assert out == tmp_path / "demo"
    for split, views in (("train", scene.train), ("test", scene.test)):
        doc = json.loads((out / f"transforms_{split}.json").read_text())
        assert len(doc["frames"]) == len(views)
        f = focal_from_fov(doc["camera_angle_x"], SIZE)
        assert f == pytest.approx(views[0].camera.K[0, 0])
        for frame, view in zip(doc["frames"], views):
            img = Image.open(out / (frame["file_path"] + ".png"))
            assert img.mode == "RGBA" and img.size == (SIZE, SIZE)
            rgba = np.asarray(img).astype(np.float32) / 255
            assert np.abs(rgba[..., 3] - view.mask).max() <= 0.5 / 255 + 1e-6
            assert np.abs(rgba[..., :3] - view.rgb).max() <= 0.5 / 255 + 1e-6
            w2c = opengl_c2w_to_w2c(np.array(frame["transform_matrix"]))
            np.testing.assert_allclose(w2c, view.camera.world_to_camera, atol=1e-9)
    gt = trimesh.load(out / "gt.ply", process=False)
    np.testing.assert_array_equal(np.asarray(gt.vertices, dtype=np.float32), scene.gt_vertices)
    np.testing.assert_array_equal(gt.faces, scene.gt_faces)


# Measured on the scene before the backdrop was added (commit 5fb50c7): per view, the sums of rgb, alpha and depth
# over all pixels, and (row, column): (rgb, alpha, depth) at a few pixels. The default scene must stay the same.
DEFAULT_SUMS = {
    "train_000": (9838.14205658529, 1161.0, 2929.869717359543),
    "train_003": (9999.17000555154, 1078.75, 2863.6225283145905),
    "test_001": (9806.57979640551, 1163.25, 3012.533472061157),
}
DEFAULT_PIXELS = {
    ("train_000", 32, 32): ((0.02076294645667076, 0.3849641978740692, 0.32450810074806213), 1.0, 3.3094482421875),
    ("train_000", 20, 40): ((0.45086759328842163, 0.0511394739151001, 0.046865351498126984), 1.0, 3.802736520767212),
    ("train_000", 45, 25): ((0.5973848700523376, 0.4096749424934387, 0.025084251537919044), 1.0, 3.201205253601074),
    ("train_003", 32, 32): ((0.3390369117259979, 0.16059812903404236, 0.48498767614364624), 1.0, 0.0),
    ("train_003", 20, 40): ((1.0, 1.0, 1.0), 0.0, 0.0),
    ("test_001", 20, 40): ((0.6616488695144653, 0.09719549864530563, 0.07635045796632767), 1.0, 3.7328245639801025),
    ("test_001", 0, 0): ((1.0, 1.0, 1.0), 0.0, 0.0),
}


def test_default_scene_is_unchanged(scene):
    views = {v.name: v for v in scene.train + scene.test}
    for name, sums in DEFAULT_SUMS.items():
        v = views[name]
        measured = [a.astype(np.float64).sum() for a in (v.rgb, v.mask, v.depth)]
        np.testing.assert_allclose(measured, sums, rtol=0, atol=1e-3)
    for (name, j, i), (rgb, alpha, depth) in DEFAULT_PIXELS.items():
        v = views[name]
        np.testing.assert_allclose(v.rgb[j, i], rgb, rtol=0, atol=1e-6)
        assert v.mask[j, i] == alpha
        assert v.depth[j, i] == pytest.approx(depth, abs=1e-6)
    assert scene.background == (1.0, 1.0, 1.0)
    elevations = [np.degrees(np.arcsin(v.camera.centre[2] / CONFIG.radius)) for v in scene.train[:4]]
    np.testing.assert_allclose(elevations, [-25.0, 35.0, 5.0, 60.0], atol=1e-9)


def test_table_sits_just_below_the_object(scene):
    assert scene.gt_vertices[:, 2].min() == pytest.approx(OBJECT_BOTTOM_Z, abs=1e-4)
    assert OBJECT_BOTTOM_Z - 0.08 < TABLE_Z < OBJECT_BOTTOM_Z


def test_backdrop_cameras_look_down_from_above_the_table(backdrop_scene):
    def elevations(views):
        return [np.degrees(np.arcsin(v.camera.centre[2] / BACKDROP.radius)) for v in views]

    np.testing.assert_allclose(elevations(backdrop_scene.train), [15.0, 35.0, 55.0, 25.0], atol=1e-9)
    np.testing.assert_allclose(elevations(backdrop_scene.test), [30.0, 20.0], atol=1e-9)
    assert backdrop_scene.background is None
    with pytest.raises(ValueError, match="outside the backdrop's room"):
        make_scene(SceneConfig(size=8, train_views=1, test_views=0, backdrop=True, radius=ROOM_RADIUS + 1))


def test_backdrop_leaves_the_object_alpha_depth_and_colour_alone(backdrop_scene):
    """The same cameras without the backdrop (elevations given explicitly) give the same alpha, depth and, where
    the object covers the whole pixel, the same colour; elsewhere the photo shows a textured, not flat, room."""
    plain = make_scene(
        SceneConfig(
            size=32, train_views=4, test_views=2, grid=32, train_elevations=(15.0, 35.0, 55.0, 25.0),
            test_elevations=(30.0, 20.0),
        )
    )  # fmt: skip
    for a, b in zip(backdrop_scene.train + backdrop_scene.test, plain.train + plain.test, strict=True):
        np.testing.assert_array_equal(a.camera.world_to_camera, b.camera.world_to_camera)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.depth, b.depth)
        full = a.mask == 1
        assert full.sum() > 50
        np.testing.assert_array_equal(a.rgb[full], b.rgb[full])
        empty = a.mask == 0
        assert np.abs(a.rgb[empty] - np.asarray(plain.background)).max(-1).min() > 0.1
        assert a.rgb[empty].std(0).max() > 0.04
    np.testing.assert_array_equal(backdrop_scene.gt_vertices, plain.gt_vertices)


def _pixel_rays(camera):
    """Unit rays (H·W, 3) through the pixel centres, row-major, in float64 (independent of ray_bundle)."""
    j, i = np.mgrid[0 : camera.height, 0 : camera.width]
    K = camera.K
    local = np.stack([(i + 0.5 - K[0, 2]) / K[0, 0], (j + 0.5 - K[1, 2]) / K[1, 1], np.ones(i.shape)], -1)
    c2w = camera.camera_to_world
    d = local.reshape(-1, 3) @ c2w[:3, :3].T
    return np.broadcast_to(c2w[:3, 3], d.shape), d / np.linalg.norm(d, axis=1, keepdims=True)


def test_backdrop_pixels_show_the_table_below_and_the_room_beyond():
    """One sub-sample per pixel, so each empty pixel is exactly what its centre ray meets: the table's texture
    where the ray crosses the disc (solved here as a ray-plane hit), else the room's where it leaves the sphere
    — above the horizon too."""
    size = 32
    table_pixels = sky_pixels = 0
    for cam in orbit_cameras(2, 4.0, 30.0, size, elevations_degrees=(35.0, 5.0), azimuth_offset_degrees=20.0):
        rgb, alpha, _ = render_view(cam, supersample=1, backdrop=True)
        o, d = _pixel_rays(cam)
        empty = alpha.reshape(-1) == 0
        t_table = (TABLE_Z - o[:, 2]) / np.minimum(d[:, 2], -1e-12)
        p_table = o + t_table[:, None] * d
        r = np.linalg.norm(p_table[:, :2], axis=1)
        on_table = (d[:, 2] < 0) & (r < TABLE_RADIUS - 1e-4)
        off_table = (d[:, 2] >= 0) | (r > TABLE_RADIUS + 1e-4)
        b = (o * d).sum(1)
        t_room = -b + np.sqrt(b * b - ((o * o).sum(1) - ROOM_RADIUS**2))
        p_room = o + t_room[:, None] * d
        colours = rgb.reshape(-1, 3)
        pick = empty & on_table
        expected = table_colour(torch.from_numpy(p_table[pick]).float()).numpy()
        np.testing.assert_allclose(colours[pick], expected, rtol=0, atol=2e-4)
        table_pixels += pick.sum()
        pick = empty & off_table
        expected = room_colour(torch.from_numpy(p_room[pick]).float()).numpy()
        np.testing.assert_allclose(colours[pick], expected, rtol=0, atol=2e-4)
        sky_pixels += (pick & (d[:, 2] > 0)).sum()
    assert table_pixels > 200 and sky_pixels > 20


def test_backdrop_silhouettes_average_sub_samples_in_linear_light():
    """A 2×2-supersampled pixel is the linear-light mean of the four sub-samples rendered one per pixel at twice
    the size: object and backdrop mixed by coverage at the silhouette, with no division by alpha."""
    cam = orbit_cameras(1, 4.0, 30.0, 24, elevations_degrees=(25.0,), azimuth_offset_degrees=70.0)[0]
    rgb, alpha, _ = render_view(cam, supersample=2, backdrop=True)
    fine_rgb, fine_alpha, _ = render_view(cam.scaled(48, 48), supersample=1, backdrop=True)

    def blocks(a):
        return a.reshape(24, 2, 24, 2, *a.shape[2:]).mean((1, 3))

    np.testing.assert_array_equal(alpha, blocks(fine_alpha))
    soft = (alpha > 0) & (alpha < 1)
    assert soft.sum() > 20
    np.testing.assert_allclose(rgb, linear_to_srgb(blocks(srgb_to_linear(fine_rgb))), rtol=0, atol=1e-5)


def test_write_backdrop_scene_as_rgb_photos_and_mask_files(backdrop_scene, tmp_path):
    out = write_scene_as_transforms(backdrop_scene, tmp_path / "photos")
    views = backdrop_scene.train
    doc = json.loads((out / "transforms_train.json").read_text())
    for frame, view in zip(doc["frames"], views, strict=True):
        img = Image.open(out / (frame["file_path"] + ".png"))
        assert img.mode == "RGB"
        assert np.abs(np.asarray(img) / 255 - view.rgb).max() <= 0.5 / 255 + 1e-6
        mask = Image.open(out / frame["mask_path"])
        assert mask.mode == "L"
        assert np.abs(np.asarray(mask) / 255 - view.mask).max() <= 0.5 / 255 + 1e-6
    # the reader takes the masks only when asked for them
    with_masks = load_transforms(out, split="train", options={"mask_source": "file"})
    without = load_transforms(out, split="train", options={"mask_source": "none"})
    for a, b, view in zip(with_masks.views, without.views, views, strict=True):
        assert np.abs(a.mask - view.mask).max() <= 0.5 / 255 + 1e-6
        assert b.mask is None
        assert np.abs(b.rgb - view.rgb).max() <= 0.5 / 255 + 1e-6
