"""NeRF volume rendering over packed samples, with empty-space skipping.

Rays are marched in the canonical box [-1, 1]³ with a fixed step; samples in empty cells of an
:class:`OccupancyGrid` are dropped before any network evaluation. A no-grad density pass finds where each
ray's transmittance falls below ``transmittance_floor``; only samples in front of that point are evaluated
again with gradients. Everything is vectorised over packed (ray, sample) lists: no per-ray Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .field import TriplaneField


@dataclass(frozen=True)
class RenderConfig:
    samples_per_diagonal: int = 512
    """Marching step = box diagonal (2√3) / this."""
    transmittance_floor: float = 1e-3
    """Samples behind the point where transmittance drops below this are skipped."""
    min_sample_opacity: float = 2e-3
    """Samples less opaque than this (σ·step) are skipped in the gradient pass."""
    chunk: int = 1 << 19
    """Maximum samples evaluated by the network at once."""


@dataclass
class RenderOutput:
    """Per-ray results: ``rgb`` (R, 3) composited on the background, ``opacity`` (R,), ``depth`` (R,) the
    expected ray distance t (0 where empty), ``depth_median`` (R,) the distance where opacity reaches ½ (0 where it
    never does), ``samples`` the number of network-evaluated samples (with grad)."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    depth_median: torch.Tensor
    samples: int
    distortion: torch.Tensor
    """Mean over rays of the mip-NeRF 360 distortion Σᵢⱼ wᵢwⱼ|tᵢ − tⱼ| + ⅓ Σᵢ wᵢ² δ (small when each ray's weight
    sits in one compact interval, i.e. surfaces are sharp)."""


class OccupancyGrid:
    """Boolean (D, D, D) grid of cells over [-1, 1]³, indexed [x, y, z]; cell k spans [-1 + 2k/D, -1 + 2(k+1)/D]."""

    def __init__(self, occupied: torch.Tensor):
        self.occupied = occupied.bool().contiguous()
        self.resolution = occupied.shape[0]
        self._bbox: tuple[torch.Tensor, torch.Tensor] | None = None

    def cell_centres(self) -> torch.Tensor:
        D = self.resolution
        axis = (torch.arange(D, device=self.occupied.device, dtype=torch.float32) + 0.5) / D * 2 - 1
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)

    def lookup(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) points inside [-1, 1]³ → (...) bool (points outside are clamped to the border cells)."""
        D = self.resolution
        idx = ((points + 1) * (D / 2)).to(torch.int32).clamp_(0, D - 1)
        flat = (idx[..., 0] * D + idx[..., 1]) * D + idx[..., 2]
        return self.occupied.view(-1)[flat.long()]

    def bbox(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Min and max corners (3,) of the occupied cells (the whole box if empty); cached."""
        if self._bbox is None:
            nz = self.occupied.nonzero()
            D = self.resolution
            if nz.numel() == 0:
                self._bbox = (-torch.ones(3), torch.ones(3))
            else:
                lo = nz.min(0).values.float() / D * 2 - 1
                hi = (nz.max(0).values.float() + 1) / D * 2 - 1
                self._bbox = (lo.clamp(-1, 1).cpu(), hi.clamp(-1, 1).cpu())
        return self._bbox

    def dilated(self, cells: int = 1) -> OccupancyGrid:
        k = 2 * cells + 1
        grid = F.max_pool3d(self.occupied[None, None].float(), k, stride=1, padding=cells)[0, 0] > 0
        return OccupancyGrid(grid)


def ray_box(
    origins: torch.Tensor, dirs: torch.Tensor, lo=-1.0, hi=1.0, near_min: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit distances of rays with the box [lo, hi] (default [-1, 1]³); rays that miss get near ≥ far."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(near_min)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def _segment_exclusive_cumsum(values: torch.Tensor, ray_index: torch.Tensor, num_rays: int) -> torch.Tensor:
    """Exclusive cumulative sum of ``values`` within each ray's contiguous run of packed samples (float64)."""
    v = values.double()
    inclusive = torch.cumsum(v, 0)
    exclusive = inclusive - v
    counts = torch.bincount(ray_index, minlength=num_rays)
    first = torch.cumsum(counts, 0) - counts
    return exclusive - exclusive[first[ray_index]]


def march(
    origins: torch.Tensor, dirs: torch.Tensor, occupancy: OccupancyGrid, config: RenderConfig, jitter: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Packed samples in occupied cells: (ray_index (S,), t (S,), points (S, 3), step)."""
    step = 2 * math.sqrt(3) / config.samples_per_diagonal
    lo, hi = occupancy.bbox()
    near, far = ray_box(origins, dirs, lo.to(origins.device), hi.to(origins.device))
    hit = far > near
    R = origins.shape[0]
    if not bool(hit.any()):
        empty = origins.new_zeros((0,))
        return empty.long(), empty, origins.new_zeros((0, 3)), step
    n_max = int(((far - near)[hit].max() / step).ceil().item()) + 1
    offset = torch.rand(R, 1, device=origins.device) if jitter else torch.full((R, 1), 0.5, device=origins.device)
    t = near[:, None] + (torch.arange(n_max, device=origins.device)[None] + offset) * step  # (R, N)
    valid = (t < far[:, None]) & hit[:, None]
    # Only look up the occupancy where the sample is inside the box, to keep the (R, N, 3) tensor short-lived.
    pts = origins[:, None] + t[..., None] * dirs[:, None]
    valid &= occupancy.lookup(pts)
    ray_index, sample_index = valid.nonzero(as_tuple=True)
    return ray_index, t[ray_index, sample_index], pts[ray_index, sample_index], step


def render_rays(
    field: TriplaneField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    occupancy: OccupancyGrid,
    config: RenderConfig,
    background: torch.Tensor,
    *,
    jitter: bool = False,
) -> RenderOutput:
    """Volume-render rays (R, 3) through ``field``. ``background``: (3,) or (R, 3). Gradients flow to the field
    when grad mode is on."""
    R = origins.shape[0]
    ray_index, t, pts, step = march(origins, dirs, occupancy, config, jitter)
    with torch.no_grad():
        sigma = torch.cat([field.density(p) for p in pts.split(config.chunk)]) if len(pts) else pts.new_zeros(0)
        optical = _segment_exclusive_cumsum(sigma * step, ray_index, R)
        keep = (torch.exp(-optical) > config.transmittance_floor) & (sigma * step > config.min_sample_opacity)
    ray_index, t, pts = ray_index[keep], t[keep], pts[keep]
    if len(pts):
        sigma, rgb = field(pts)
    else:
        sigma, rgb = pts.new_zeros(0), pts.new_zeros(0, 3)
    tau = sigma * step
    transmittance = torch.exp(-_segment_exclusive_cumsum(tau, ray_index, R)).to(tau.dtype)
    weights = transmittance * (1 - torch.exp(-tau))
    w_before = _segment_exclusive_cumsum(weights, ray_index, R)
    wt_before = _segment_exclusive_cumsum(weights * t, ray_index, R)
    pairwise = 2 * (weights * (t * w_before - wt_before)).sum()
    distortion = (pairwise + (weights.square() * step).sum() / 3) / max(R, 1)
    with torch.no_grad():
        crossing = (transmittance > 0.5) & (transmittance - weights <= 0.5)
        depth_median = torch.zeros(R, device=origins.device).index_put_((ray_index[crossing],), t[crossing])
    opacity = torch.zeros(R, device=origins.device).index_add(0, ray_index, weights)
    color = torch.zeros(R, 3, device=origins.device).index_add(0, ray_index, weights[:, None] * rgb)
    depth = torch.zeros(R, device=origins.device).index_add(0, ray_index, weights * t)
    color = color + (1 - opacity)[:, None] * background
    return RenderOutput(
        rgb=color,
        opacity=opacity,
        depth=depth,
        depth_median=depth_median,
        samples=int(len(pts)),
        distortion=distortion.to(color.dtype),
    )


@torch.no_grad()
def render_image(
    field: TriplaneField,
    occupancy: OccupancyGrid,
    camera,
    config: RenderConfig,
    background=(1.0, 1.0, 1.0),
    rays_per_chunk: int = 32768,
) -> torch.Tensor:
    """Volume-render a whole view (canonical camera) → (H, W, 3) on a flat background."""
    from .cameras import ray_bundle

    device = field.planes.device
    origins, dirs = ray_bundle(camera, device)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    parts = [
        render_rays(field, o, d, occupancy, config, bg).rgb
        for o, d in zip(origins.view(-1, 3).split(rays_per_chunk), dirs.view(-1, 3).split(rays_per_chunk))
    ]
    return torch.cat(parts).view(camera.height, camera.width, 3)
