import math

import numpy as np
import pytest
import torch

from backend.mesh import Mesh
from backend.metrics import chamfer_l1, fscore, mesh_metrics, normal_consistency, psnr, sample_surface, ssim


def _cube(half=1.0):
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], dtype=np.float64)
    # vertex index = 4*ix + 2*iy + iz
    quads = [
        (0, 1, 3, 2),  # x = -
        (4, 6, 7, 5),  # x = +
        (0, 4, 5, 1),  # y = -
        (2, 3, 7, 6),  # y = +
        (0, 2, 6, 4),  # z = -
        (1, 5, 7, 3),  # z = +
    ]
    f = []
    for a, b, c, d in quads:
        f += [(a, b, c), (a, c, d)]
    return v, np.array(f, dtype=np.int64)


def _ssim_reference(x, y, size=11, sigma=1.5):
    """Slow, explicit SSIM: loop over every valid window position and channel."""
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    H, W, C = x.shape
    vals = []
    for c in range(C):
        for r in range(H - size + 1):
            for q in range(W - size + 1):
                px = x[r : r + size, q : q + size, c]
                py = y[r : r + size, q : q + size, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * (px - mx) ** 2).sum()
                vy = (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_known_value_and_mask():
    a = np.zeros((8, 8, 3))
    b = np.full((8, 8, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-9)  # mse 0.01 → 20 dB
    assert psnr(a, a) == 100.0
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(20.0)
    c = b.copy()
    c[:4] = 0.0  # top half now exact
    mask = np.zeros((8, 8))
    mask[4:] = 1.0
    assert psnr(a, c, mask) == pytest.approx(20.0)
    assert psnr(a, c) == pytest.approx(-10 * math.log10(0.005))
    assert psnr(a, b * 0.5) > psnr(a, b)


def test_ssim_properties_and_reference():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:24] / 20.0
    x = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy), xx * yy], -1)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    n1 = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    n2 = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    s1, s2 = ssim(n1, x), ssim(n2, x)
    assert 1.0 > s1 > s2
    assert s1 == pytest.approx(_ssim_reference(n1, x), abs=1e-9)
    assert s2 == pytest.approx(_ssim_reference(n2, x), abs=1e-9)
    assert ssim(torch.from_numpy(n1).float(), torch.from_numpy(x).float()) == pytest.approx(s1, abs=1e-5)
    # constant images: SSIM of equal means is 1, of different means is (2ab + c1) / (a² + b² + c1)
    a, b = np.full((16, 16, 3), 0.2), np.full((16, 16, 3), 0.6)
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.04 + 0.36 + 1e-4))


def test_sample_surface_area_weighted_and_deterministic():
    v, f = _cube()
    p1, n1 = sample_surface(v, f, 6000, seed=3)
    p2, n2 = sample_surface(v, f, 6000, seed=3)
    p3, _ = sample_surface(v, f, 6000, seed=4)
    assert p1.shape == (6000, 3) and n1.shape == (6000, 3)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(p1, p3)
    # on the surface: max |coord| == 1
    assert np.allclose(np.abs(p1).max(axis=1), 1.0)
    # normals are outward and axis-aligned
    assert np.allclose(np.abs(n1).max(axis=1), 1.0)
    assert np.all((p1 * n1).sum(axis=1) > 0.999)
    # each face of the cube receives ~1/6 of the samples
    axis = np.argmax(np.abs(p1), axis=1)
    side = p1[np.arange(6000), axis] > 0
    counts = np.bincount(axis * 2 + side, minlength=6)
    assert np.all(np.abs(counts / 6000 - 1 / 6) < 0.03)
    # area weighting: a mesh made of a big and a tiny triangle
    v2 = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [5.1, 0, 0], [5, 0.1, 0]], dtype=float)
    f2 = np.array([[0, 1, 2], [3, 4, 5]])
    p, _ = sample_surface(v2, f2, 20000, seed=0)
    frac_small = (p[:, 0] > 4).mean()
    assert frac_small == pytest.approx(0.01 / 1.01, abs=0.003)
    # uniform within a triangle: mean is the centroid
    assert p[p[:, 0] < 4].mean(0)[:2] == pytest.approx([1 / 3, 1 / 3], abs=0.01)


def test_chamfer_fscore_normals_simple():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0.1], [1, 0, 0.1], [5, 0, 0]])
    # a→b: 0.1, 0.1 ; b→a: 0.1, 0.1, 4
    assert chamfer_l1(a, b) == pytest.approx((0.1 + (0.2 + 4) / 3) / 2)
    assert chamfer_l1(a, a) == 0.0
    # precision 1, recall 2/3
    assert fscore(a, b, 0.2) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert fscore(a, b, 0.05) == 0.0
    na = np.array([[0.0, 0, 1], [0, 0, -1]])
    nb = np.array([[0.0, 0, 2], [0, 1, 0], [1, 0, 0]])
    # a→b: |1|, 0 → 0.5 ; b→a: 1, 0, 0 → 1/3
    assert normal_consistency(a, na, b, nb) == pytest.approx((0.5 + 1 / 3) / 2)


def test_mesh_metrics_relative_to_diagonal():
    v, f = _cube()
    gt_diag = math.sqrt(12)
    same = mesh_metrics(Mesh(torch.from_numpy(v).float(), torch.from_numpy(f)), v, f)
    assert same["bbox_diagonal"] == pytest.approx(gt_diag)
    assert same["relative_to"] == "gt_bbox_diagonal"
    assert same["chamfer_l1"] < 0.005
    assert same["fscore"] > 0.99
    assert same["normal_consistency"] > 0.99
    # a cube grown by 5 %: surfaces 0.05 apart (> 1 % of the diagonal = 0.0346) almost everywhere
    big = mesh_metrics(Mesh(torch.from_numpy(v * 1.05).float(), torch.from_numpy(f)), v, f, count=20000)
    assert big["chamfer_l1_absolute"] == pytest.approx(0.05, rel=0.15)
    assert big["chamfer_l1"] == pytest.approx(big["chamfer_l1_absolute"] / gt_diag)
    assert big["fscore"] < 0.1
    assert big["fscore_threshold"] == pytest.approx(0.01 * gt_diag)
    # scale invariance of the relative numbers
    s = mesh_metrics(Mesh(torch.from_numpy(v * 10.5).float(), torch.from_numpy(f)), v * 10, f, count=20000)
    assert s["chamfer_l1"] == pytest.approx(big["chamfer_l1"], rel=0.05)
