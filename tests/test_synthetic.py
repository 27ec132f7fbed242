import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.cameras import focal_from_fov, opengl_c2w_to_w2c, project
from backend.metrics import sample_surface
from backend.synthetic import SceneConfig, make_scene, scene_sdf, write_scene_as_transforms

SIZE = 64
CONFIG = SceneConfig(size=SIZE, train_views=8, test_views=2, grid=96)


@pytest.fixture(scope="module")
def scene():
    return make_scene(CONFIG)


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
