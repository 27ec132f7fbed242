"""Quality metrics: image (PSNR, SSIM) and geometry (Chamfer-L1, F-score, normal consistency).

Images are (H, W, 3) in [0, 1], numpy or torch. Point sets are (N, 3) numpy (torch accepted and converted).
Geometry metrics use Euclidean nearest-neighbour distances from :class:`scipy.spatial.cKDTree`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from .mesh import Mesh

PSNR_CAP = 100.0


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_image_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------------- images


def psnr(pred, target, mask=None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (higher is better), capped at 100 dB.

    ``mask`` (H, W) weights pixels (values in [0, 1]); the mean squared error is taken over the weighted pixels
    and all three channels.
    """
    p = _as_numpy(pred).astype(np.float64)
    t = _as_numpy(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"psnr: shapes differ {p.shape} vs {t.shape}")
    err = (p - t) ** 2
    if err.ndim == 3:
        err = err.mean(axis=-1)
    if mask is not None:
        w = _as_numpy(mask).astype(np.float64).reshape(err.shape)
        total = w.sum()
        if total <= 0:
            raise ValueError("psnr: mask selects no pixels")
        mse = float((err * w).sum() / total)
    else:
        mse = float(err.mean())
    if mse <= 10.0 ** (-PSNR_CAP / 10.0):
        return PSNR_CAP
    return min(PSNR_CAP, -10.0 * math.log10(mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred, target, window_size: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of two (H, W, 3) images in [0, 1].

    Gaussian window 11×11, σ = 1.5, C1 = 0.01², C2 = 0.03², computed per channel over the 'valid' region (no
    padding) and averaged over pixels and channels. Images smaller than the window are compared with a
    window shrunk to the image size.
    """
    p = _as_image_tensor(pred)
    t = _as_image_tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"ssim: shapes differ {tuple(p.shape)} vs {tuple(t.shape)}")
    if p.ndim == 2:
        p, t = p[..., None], t[..., None]
    return float(structural_similarity(p.permute(2, 0, 1)[None], t.permute(2, 0, 1)[None], window_size, sigma))


def structural_similarity(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches (N, C, H, W) as a differentiable scalar tensor (see :func:`ssim`)."""
    C, H, W = x.shape[-3:]
    size = min(window_size, H, W)
    win = _gaussian_window(size, sigma).to(x)[None, None].expand(C, 1, size, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win, groups=C)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


# -------------------------------------------------------------------------------------------------------- geometry


def sample_surface(vertices, faces, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points sampled uniformly by area on a triangle mesh, with their (face) unit normals.

    Deterministic for a given ``seed``. Returns ``(points (count, 3), normals (count, 3))`` float64.
    """
    v = _as_numpy(vertices).astype(np.float64)
    f = _as_numpy(faces).astype(np.int64)
    if len(f) == 0:
        raise ValueError("sample_surface: mesh has no faces")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    double_area = np.linalg.norm(cross, axis=1)
    total = double_area.sum()
    if total <= 0:
        raise ValueError("sample_surface: mesh has zero area")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(double_area / total)
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, rng.random(count), side="right")
    idx = np.minimum(idx, len(f) - 1)
    r1 = np.sqrt(rng.random(count))
    r2 = rng.random(count)
    wa, wb, wc = 1.0 - r1, r1 * (1.0 - r2), r1 * r2
    points = wa[:, None] * a[idx] + wb[:, None] * b[idx] + wc[:, None] * c[idx]
    normals = cross[idx] / np.maximum(double_area[idx], 1e-30)[:, None]
    return points, normals


def _nn(points_from: np.ndarray, points_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, idx = cKDTree(points_to).query(points_from, k=1)
    return dist, idx


def chamfer_l1(points_a, points_b) -> float:
    """Symmetric Chamfer-L1: ``(mean_a min_b |a-b| + mean_b min_a |a-b|) / 2`` with Euclidean distances."""
    a, b = _as_numpy(points_a).astype(np.float64), _as_numpy(points_b).astype(np.float64)
    d_ab, _ = _nn(a, b)
    d_ba, _ = _nn(b, a)
    return float((d_ab.mean() + d_ba.mean()) / 2)


def fscore(points_a, points_b, threshold: float) -> float:
    """F-score at ``threshold``: harmonic mean of precision (fraction of ``a`` within the threshold of ``b``)
    and recall (fraction of ``b`` within the threshold of ``a``). ``a`` is the prediction, ``b`` the truth."""
    a, b = _as_numpy(points_a).astype(np.float64), _as_numpy(points_b).astype(np.float64)
    d_ab, _ = _nn(a, b)
    d_ba, _ = _nn(b, a)
    precision = float((d_ab < threshold).mean())
    recall = float((d_ba < threshold).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def normal_consistency(points_a, normals_a, points_b, normals_b) -> float:
    """Mean |cos| between each point's normal and its nearest neighbour's normal, averaged over both directions.

    Orientation-agnostic (1 = normals agree up to sign everywhere)."""
    a, b = _as_numpy(points_a).astype(np.float64), _as_numpy(points_b).astype(np.float64)
    na = _as_numpy(normals_a).astype(np.float64)
    nb = _as_numpy(normals_b).astype(np.float64)
    na = na / np.maximum(np.linalg.norm(na, axis=1, keepdims=True), 1e-30)
    nb = nb / np.maximum(np.linalg.norm(nb, axis=1, keepdims=True), 1e-30)
    _, i_ab = _nn(a, b)
    _, i_ba = _nn(b, a)
    c_ab = np.abs((na * nb[i_ab]).sum(axis=1)).mean()
    c_ba = np.abs((nb * na[i_ba]).sum(axis=1)).mean()
    return float((c_ab + c_ba) / 2)


def mesh_metrics(pred: Mesh, gt_vertices, gt_faces, count: int = 100_000, seed: int = 0) -> dict:
    """Compare a predicted mesh to a ground-truth mesh by surface sampling.

    ``count`` points are sampled by area on each mesh (seeds ``seed`` and ``seed + 1``). Returned keys:

    - ``bbox_diagonal``: length of the GT mesh's axis-aligned bounding-box diagonal (world units).
    - ``chamfer_l1``: symmetric Chamfer-L1 (see :func:`chamfer_l1`) **divided by** ``bbox_diagonal``
      (scale-free; e.g. 0.005 = 0.5 % of the diagonal).
    - ``chamfer_l1_absolute``: the same in world units.
    - ``fscore``: F-score at a threshold of 1 % of ``bbox_diagonal`` (``fscore_threshold``, world units).
    - ``normal_consistency``: see :func:`normal_consistency` (in [0, 1], higher is better).
    - ``relative_to``: ``"gt_bbox_diagonal"``, stating the normalisation of ``chamfer_l1``.
    """
    gv = _as_numpy(gt_vertices).astype(np.float64)
    gf = _as_numpy(gt_faces).astype(np.int64)
    diag = float(np.linalg.norm(gv.max(axis=0) - gv.min(axis=0)))
    if diag <= 0:
        raise ValueError("mesh_metrics: degenerate ground-truth mesh")
    pa, na = sample_surface(pred.vertices, pred.faces, count, seed)
    pb, nb = sample_surface(gv, gf, count, seed + 1)
    d_ab, i_ab = _nn(pa, pb)
    d_ba, i_ba = _nn(pb, pa)
    cd = float((d_ab.mean() + d_ba.mean()) / 2)
    thr = 0.01 * diag
    precision = float((d_ab < thr).mean())
    recall = float((d_ba < thr).mean())
    fs = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    nc = float((np.abs((na * nb[i_ab]).sum(1)).mean() + np.abs((nb * na[i_ba]).sum(1)).mean()) / 2)
    return {
        "chamfer_l1": cd / diag,
        "chamfer_l1_absolute": cd,
        "fscore": fs,
        "fscore_threshold": thr,
        "precision": precision,
        "recall": recall,
        "normal_consistency": nc,
        "bbox_diagonal": diag,
        "relative_to": "gt_bbox_diagonal",
    }
