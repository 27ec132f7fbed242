"""Held-out evaluation of a reconstruction: mesh renders vs test images, volume renders, geometry vs ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mesh_render import composite, render_mesh
from .metrics import mesh_metrics, psnr, ssim
from .pipeline import Reconstruction
from .progress import Hooks
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
    hooks: Hooks | None = None,
) -> Evaluation:
    """Render ``result.mesh`` at the (world-frame) test views and compare on a white background.

    ``volume_views``: how many test views are also volume-rendered from ``result.field``, the field as the fit left
    it (before meshing and before texture refinement), so the cost of meshing is visible (``volume_psnr``).
    ``gt_mesh``: (vertices, faces) in the world frame for Chamfer / F-score. Mesh renders are anti-aliased with
    ``supersample``² samples per pixel, like the (anti-aliased) test images. ``hooks`` gets a report (stage
    ``evaluate``) before each render and before the geometry scores.
    """
    hooks = hooks or Hooks()
    psnrs, ssims, pairs = [], [], []
    for n, view in enumerate(test_views):
        hooks.report("evaluate", n, len(test_views), f"mesh render {n + 1}/{len(test_views)}")
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
    volume_list = test_views[:volume_views]
    for n, view in enumerate(volume_list):
        hooks.report("evaluate", n, len(volume_list), f"volume render {n + 1}/{len(volume_list)}")
        canonical = result.frame.view_to_canonical(view)
        pred = render_image(result.field, result.occupancy, canonical.camera, render or RenderConfig()).cpu()
        vol.append(psnr(pred, composite(view.rgb, view.mask)))
    if vol:
        metrics["volume_psnr"] = float(np.mean(vol))
        metrics["volume_views"] = len(vol)
    if gt_mesh is not None:
        hooks.report("evaluate", 0, 1, "geometry scores")
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
