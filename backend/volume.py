"""NeRF volume rendering: two samplers over the same field.

- :func:`render_rays` (the ``fit`` method): packed samples at a fixed step, with empty-space skipping.
- :func:`render_rays_dense` (the official GTR renderer, BaseNeRF): ``samples`` bin midpoints between each ray's entry
  and exit of the scene box (near ≥ 0.2), as the network was trained with; eval mode (no jitter). Rays may be
  batched, (B, N, 3) with a batched field (planes (B, 3, C, R, R)); every output then gains the leading B.
  Differentiable with respect to the field (and so to the generator that produced its planes).

The packed sampler marches rays in the canonical box [-1, 1]³ with a fixed step; samples in empty cells of an
:class:`OccupancyGrid` are dropped before any network evaluation. A no-grad density pass, a window of samples at
a time, finds where each ray's transmittance falls below ``transmittance_floor`` and stops marching it there; only
samples in front of that point are evaluated again with gradients. Everything is vectorised over the rays of a
window and over packed (ray, sample) lists: no per-ray Python loop.
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
    expected ray distance t (0 where empty), ``samples`` the number of network-evaluated samples (with grad)."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
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


class _Marcher:
    """Marches rays (R, 3) through the occupied cells of the box at the packed sampler's step, for the rays still
    ``active``, evaluating the density and carrying each ray's optical depth from window to window; :meth:`advance`
    keeps the rays that go on. Sample k of ray r lies at near_r + (k + offset_r) · step.

    Each window looks ``window`` samples ahead of each ray's cursor but evaluates at most ``evaluate`` of those in
    occupied cells; the cursor then moves past the last one evaluated. A ray that enters a thick occupied region
    (an object's interior) so stops being evaluated a few samples after its transmittance falls below the floor,
    not a whole window later."""

    def __init__(self, field: TriplaneField, origins, dirs, occupancy: OccupancyGrid, config: RenderConfig,
                 jitter: bool, window: int, evaluate: int):  # fmt: skip
        device = origins.device
        self.field, self.origins, self.dirs, self.occupancy = field, origins, dirs, occupancy
        self.chunk = config.chunk
        self.step = 2 * math.sqrt(3) / config.samples_per_diagonal
        lo, hi = occupancy.bbox()
        self.near, self.far = ray_box(origins, dirs, lo.to(device), hi.to(device))
        R = origins.shape[0]
        self.offset = torch.rand(R, 1, device=device) if jitter else torch.full((R, 1), 0.5, device=device)
        self.optical = torch.zeros(R, dtype=torch.float64, device=device)
        self.active = (self.far > self.near).nonzero().squeeze(1)
        self.index = torch.arange(window, device=device)[None]
        self.cursor = torch.zeros(R, dtype=torch.int64, device=device)
        self.evaluate = min(evaluate, window)

    def window(self) -> tuple[torch.Tensor, ...]:
        """The active rays' next window: sample distances t (A, W), points (A, W, 3), valid (A, W) (inside the box,
        in an occupied cell and among the first ``evaluate`` such of the window), σ·step (A, W) (0 where not
        valid) and the optical depth up to and including each sample (A, W) float64."""
        a = self.active
        W = self.index.shape[1]
        t = self.near[a, None] + (self.cursor[a, None] + self.index + self.offset[a]) * self.step
        valid = t < self.far[a, None]
        pts = self.origins[a, None] + t[..., None] * self.dirs[a, None]
        valid &= self.occupancy.lookup(pts)
        rank = torch.cumsum(valid, 1, dtype=torch.int32)  # occupied samples up to and including each
        valid &= rank <= self.evaluate
        last = (rank >= self.evaluate).to(torch.uint8).argmax(1)  # the last sample evaluated, where the window is full
        self._moves = torch.where(rank[:, -1] > self.evaluate, last + 1, W)
        sigma = torch.zeros(valid.shape, device=pts.device)
        inside = pts[valid]
        if len(inside):
            sigma[valid] = torch.cat([self.field.density(p) for p in inside.split(self.chunk)])
        tau = sigma * self.step
        depth = self.optical[a, None] + torch.cumsum(tau.double(), 1)
        self.optical[a] = depth[:, -1]
        return t, pts, valid, tau, depth

    def advance(self, going_on: torch.Tensor) -> None:
        """Move the active rays' cursors past the last window and keep those where ``going_on`` (A,) and that
        have samples left."""
        self.cursor[self.active] += self._moves
        a = self.active[going_on]
        self.active = a[self.near[a] + self.cursor[a] * self.step < self.far[a]]


@torch.no_grad()
def front_samples(
    field: TriplaneField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    occupancy: OccupancyGrid,
    config: RenderConfig,
    jitter: bool,
    window: int = 64,
    evaluate: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The samples worth evaluating with gradients, packed ray by ray in marching order: (ray_index (S,), t (S,),
    points (S, 3), step). A sample is kept when it lies in an occupied cell, in front of the point where its ray's
    transmittance falls below ``transmittance_floor``, and is at least ``min_sample_opacity`` opaque (σ·step). A
    ray is marched no further once its transmittance is below the floor, so the density behind surfaces is never
    evaluated."""
    march = _Marcher(field, origins, dirs, occupancy, config, jitter, window, evaluate)
    floor = config.transmittance_floor
    limit = -math.log(floor) if floor > 0 else math.inf  # optical depth at the floor
    rays, ts, points = [], [], []
    while len(march.active):
        t, pts, valid, tau, depth = march.window()
        keep = valid & (depth - tau < limit) & (tau > config.min_sample_opacity)
        a, k = keep.nonzero(as_tuple=True)
        rays.append(march.active[a])
        ts.append(t[a, k])
        points.append(pts[a, k])
        march.advance(depth[:, -1] < limit)
    if not rays:
        empty = origins.new_zeros((0,))
        return empty.long(), empty, origins.new_zeros((0, 3)), march.step
    ray_index = torch.cat(rays)
    order = torch.argsort(ray_index, stable=True)  # windows came one after another: group each ray's samples
    return ray_index[order], torch.cat(ts)[order], torch.cat(points)[order], march.step


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
    ray_index, t, pts, step = front_samples(field, origins, dirs, occupancy, config, jitter)
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
    opacity = torch.zeros(R, device=origins.device).index_add(0, ray_index, weights)
    color = torch.zeros(R, 3, device=origins.device).index_add(0, ray_index, weights[:, None] * rgb)
    depth = torch.zeros(R, device=origins.device).index_add(0, ray_index, weights * t)
    color = color + (1 - opacity)[:, None] * background
    return RenderOutput(
        rgb=color,
        opacity=opacity,
        depth=depth,
        samples=int(len(pts)),
        distortion=distortion.to(color.dtype),
    )


@torch.no_grad()
def stop_distances(
    field: TriplaneField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    occupancy: OccupancyGrid,
    config: RenderConfig,
    window: int = 64,
    evaluate: int = 32,
) -> torch.Tensor:
    """Where each ray (R, 3) stops: the distance t of the sample at which its transmittance falls to ½ (the median
    of its weights), +inf where it never does (the pixel shows background). Each ray is marched (no jitter) only
    until it stops, so the density behind a surface is never evaluated."""
    march = _Marcher(field, origins, dirs, occupancy, config, False, window, evaluate)
    stops = torch.full((origins.shape[0],), float("inf"), device=origins.device)
    while len(march.active):
        t, _, _, _, depth = march.window()
        crossed = depth >= math.log(2.0)
        stopped = crossed.any(1)
        first = crossed.to(torch.uint8).argmax(1)  # the first sample past the crossing
        stops[march.active[stopped]] = t[stopped, first[stopped]]
        march.advance(~stopped)
    return stops


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


# ------------------------------------------------------------------------------------ the official dense sampler

FAR_MISS = 1e10


@dataclass
class DenseRenderOutput:
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


def render_rays_dense(
    field: TriplaneField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    samples: int = 256,
    min_near: float = 0.2,
    chunk: int = 1 << 20,
) -> DenseRenderOutput:
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
    return DenseRenderOutput(color, opacity, weights, t_mid, valid)
