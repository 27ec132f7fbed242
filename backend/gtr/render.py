"""The official volume renderer (BaseNeRF): dense samples between the ray's entry and exit of the scene box.

Not used by the official inference script, but part of the model: training renders with it, and the pipeline
uses it for previews. Eval mode only (no jitter). Rays may be batched, (B, N, 3) with a batched field (planes
(B, 3, C, R, R)); every output then gains the leading B. Differentiable with respect to the field (and so to the
generator that produced its planes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..field import TriplaneField

FAR_MISS = 1e10


@dataclass
class VolumeRender:
    rgb: torch.Tensor
    """(N, 3) on a white background, clamped to [0, 1]."""
    opacity: torch.Tensor
    """(N, 1) Σ w."""
    weights: torch.Tensor
    """(N, S) compositing weights."""
    t_mid: torch.Tensor
    """(N, S) sample distances (bin midpoints)."""
    valid: torch.Tensor
    """(N, 1) bool: the ray meets the box."""

    def depth_median(self) -> torch.Tensor:
        """(N, 1) midpoint of the first sample whose cumulative weight reaches 0.5."""
        cum = torch.cumsum(self.weights, dim=-1)
        half = torch.full_like(cum[..., :1], 0.5)
        idx = torch.searchsorted(cum.contiguous(), half, right=False).clamp(max=cum.shape[-1] - 1)
        return torch.gather(self.t_mid, -1, idx)

    def depth_expected(self) -> torch.Tensor:
        """(N, 1) Σ w t / (Σ w + 1e-10), clipped to the range of the sample midpoints."""
        d = (self.weights * self.t_mid).sum(-1, keepdim=True) / (self.weights.sum(-1, keepdim=True) + 1e-10)
        return torch.clip(d, self.t_mid.min(), self.t_mid.max())


def near_far(origins: torch.Tensor, dirs: torch.Tensor, bound: float = 1.0, min_near: float = 0.2):
    """Slab test against [-bound, bound]³, clamped to ≥ ``min_near``. Returns raw near, far (N, 1) (1e10 for a
    miss) and the valid mask."""
    t0 = (-bound - origins) / dirs
    t1 = (bound - origins) / dirs
    near = torch.minimum(t0, t1).amax(-1, keepdim=True).clamp(min_near, FAR_MISS)
    far = torch.maximum(t0, t1).amin(-1, keepdim=True).clamp(min_near, FAR_MISS)
    valid = far > near
    near = torch.where(valid, near, torch.full_like(near, FAR_MISS))
    far = torch.where(valid, far, torch.full_like(far, FAR_MISS))
    return near, far, valid


def fill_misses(near: torch.Tensor, far: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays that miss the box get the smallest valid near and the largest valid far of their batch (their density
    is zeroed). (..., N, 1) tensors; a batch without a valid ray is left as it is."""
    inf = torch.full_like(near, float("inf"))
    lowest = torch.where(valid, near, inf).amin(dim=(-2, -1), keepdim=True)
    highest = torch.where(valid, far, -inf).amax(dim=(-2, -1), keepdim=True)
    any_valid = valid.any(dim=-2, keepdim=True)
    near = torch.where(valid | ~any_valid, near, lowest)
    far = torch.where(valid | ~any_valid, far, highest)
    return near, far


def render_rays(
    field: TriplaneField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    samples: int = 256,
    min_near: float = 0.2,
    chunk: int = 1 << 20,
) -> VolumeRender:
    """Render rays (N, 3), or (B, N, 3) through a batched field, with ``samples`` bin-midpoint samples per ray."""
    near, far, valid = near_far(origins, dirs, 1.0, min_near)
    near, far = fill_misses(near, far, valid)
    edges = torch.linspace(0.0, 1.0, samples + 1, device=origins.device, dtype=origins.dtype)
    t = edges * far + (1 - edges) * near  # (N, S+1)
    t_mid = (t[..., 1:] + t[..., :-1]) / 2
    delta = t[..., 1:] - t[..., :-1]
    points = (origins[..., None, :] + dirs[..., None, :] * t_mid[..., None]).flatten(-3, -2)  # (..., N·S, 3)
    outputs = [field(p) for p in points.split(chunk, dim=-2)]
    sigma = torch.cat([o[0] for o in outputs], dim=-1)
    rgb = torch.cat([o[1] for o in outputs], dim=-2)
    sigma = sigma.view(t_mid.shape) * valid
    rgb = torch.nan_to_num(rgb.view(*t_mid.shape, 3))
    tau = torch.where(delta > 0, sigma * delta, torch.zeros_like(delta))
    alpha = 1 - torch.exp(-tau)
    transmittance = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[..., :1]), tau[..., :-1]], -1), -1))
    weights = torch.nan_to_num(alpha * transmittance)
    opacity = weights.sum(-1, keepdim=True)
    color = ((weights[..., None] * rgb).sum(-2) + (1 - opacity)).clamp(0, 1)
    return VolumeRender(color, opacity, weights, t_mid, valid)
