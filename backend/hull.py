"""Visual hull: carve a voxel grid with the views' masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera
from .progress import Hooks


def project_points(camera: Camera, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`backend.cameras.project`: (P, 3) → pixels (P, 2), camera z (P,)."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=points.dtype, device=points.device)
    K = torch.as_tensor(camera.K, dtype=points.dtype, device=points.device)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    if camera.orthographic:
        uv = cam[:, :2] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    else:
        uv = cam[:, :2] / z.clamp_min(1e-9)[:, None] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    return uv, z


def pixel_lookup(camera: Camera, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For (P, 3) world points: the row-major index of the pixel each falls in (clamped into the image), whether
    it falls inside the image in front of the camera, and its camera z."""
    uv, z = project_points(camera, points)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    index = row.clamp(0, camera.height - 1) * camera.width + col.clamp(0, camera.width - 1)
    return index, inside, z


def carve(
    cameras: list[Camera],
    masks: list[np.ndarray],
    points: torch.Tensor,
    *,
    threshold: float = 0.5,
    dilate_px: int = 2,
    min_seen_fraction: float = 0.5,
    dissent: int = 0,
    hooks: Hooks | None = None,
) -> torch.Tensor:
    """(P,) bool: points that at most ``dissent`` masks call background and that at least ``min_seen_fraction``
    of views see.

    A point outside a view's image (or behind it) is *unknown* for that view, not background. Masks are
    dilated by ``dilate_px`` so thin parts and slightly-off cameras are not carved away.
    """
    alive = torch.arange(points.shape[0], device=points.device)
    seen = torch.zeros(points.shape[0], dtype=torch.int32, device=points.device)
    against = torch.zeros(points.shape[0], dtype=torch.int32, device=points.device)
    for n, (camera, mask) in enumerate(zip(cameras, masks)):
        pts = points[alive]
        m = torch.as_tensor(mask, dtype=torch.float32, device=points.device)[None, None]
        if dilate_px > 0:
            m = F.max_pool2d(m, 2 * dilate_px + 1, stride=1, padding=dilate_px)
        m = m[0, 0] > threshold
        index, inside, _ = pixel_lookup(camera, pts)
        fg = m.reshape(-1)[index]
        seen[alive] += inside.int()
        against[alive] += (inside & ~fg).int()
        alive = alive[against[alive] <= dissent]
        if hooks:
            hooks.report("hull", n + 1, len(cameras))
    keep = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    keep[alive] = True
    return keep & (seen >= max(1, int(np.ceil(min_seen_fraction * len(cameras)))))


def lattice(lo: np.ndarray, hi: np.ndarray, resolution: int, device) -> torch.Tensor:
    """(res³, 3) cell centres of a box split into res³ cells, x slowest."""
    axes = [
        torch.as_tensor(lo[k] + (np.arange(resolution) + 0.5) / resolution * (hi[k] - lo[k]), dtype=torch.float32)
        for k in range(3)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).to(device)
