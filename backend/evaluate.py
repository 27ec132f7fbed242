"""Held-out evaluation of a reconstruction: mesh renders vs test images, volume renders, geometry vs ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mesh_render import composite, render_mesh
from .metrics import mesh_metrics, psnr, ssim
from .pipeline import Reconstruction
from .views import View
from .volume import RenderConfig, render_image


@dataclass
class Evaluation:
    metrics: dict
    """Scalar results (means over the test views) plus per-view lists."""
    pairs: list[tuple[np.ndarray, np.ndarray]]
    """(ground truth, mesh render) images per test view, (H, W, 3) float32, for contact sheets."""


def evaluate(
    result: Reconstruction,
    test_views: list[View],
    gt_mesh: tuple[np.ndarray, np.ndarray] | None = None,
    volume_views: int = 8,
    render: RenderConfig | None = None,
    supersample: int = 3,
) -> Evaluation:
    """Render ``result.mesh`` at the (world-frame) test views and compare on a white background.

    ``volume_views``: how many test views are also volume-rendered from the fitted field (before meshing), so the
    cost of meshing is visible. ``gt_mesh``: (vertices, faces) in the world frame for Chamfer / F-score.
    Mesh renders are anti-aliased with ``supersample``² samples per pixel, like the (anti-aliased) test images.
    """
    psnrs, ssims, pairs = [], [], []
    for view in test_views:
        pred = render_mesh(result.mesh, view.camera, supersample=supersample).cpu()
        gt = composite(view.rgb, view.mask)
        psnrs.append(psnr(pred, gt))
        ssims.append(ssim(pred, gt))
        pairs.append((gt.numpy(), pred.numpy()))
    metrics: dict = {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "lpips": None,
        "test_views": len(test_views),
        "psnr_per_view": [round(float(p), 3) for p in psnrs],
    }
    vol = []
    volume_views = volume_views if result.occupancy is not None else 0  # only the fit method has one
    for view in test_views[:volume_views]:
        canonical = result.normalisation.to_canonical(view)
        pred = render_image(result.field, result.occupancy, canonical.camera, render or RenderConfig()).cpu()
        vol.append(psnr(pred, composite(view.rgb, view.mask)))
    if vol:
        metrics["volume_psnr"] = float(np.mean(vol))
        metrics["volume_views"] = len(vol)
    if gt_mesh is not None:
        geo = mesh_metrics(result.mesh.to("cpu"), gt_mesh[0], gt_mesh[1])
        metrics.update(geo)
    return Evaluation(metrics, pairs)


def contact_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], columns: int = 4) -> np.ndarray:
    """Tile (ground truth above reconstruction) pairs into one (H', W', 3) image."""
    if not pairs:
        return np.ones((8, 8, 3), np.float32)
    h = max(p[0].shape[0] for p in pairs)
    w = max(p[0].shape[1] for p in pairs)
    rows = (len(pairs) + columns - 1) // columns
    sheet = np.ones((rows * 2 * h, min(columns, len(pairs)) * w, 3), np.float32)
    for n, (gt, pred) in enumerate(pairs):
        r, c = divmod(n, columns)
        sheet[2 * r * h : 2 * r * h + gt.shape[0], c * w : c * w + gt.shape[1]] = gt
        sheet[(2 * r + 1) * h : (2 * r + 1) * h + pred.shape[0], c * w : c * w + pred.shape[1]] = pred
    return sheet


def side_by_side(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.concatenate([gt, pred], axis=1)
