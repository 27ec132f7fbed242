"""Stage 4 — fit a triplane field to the views by volume rendering (the no-weights path).

The visual hull seeds the density (a pre-activation prior: positive inside, strongly negative outside) and the
occupancy grid used for empty-space skipping, so optimisation starts near the right shape and never grows
floaters outside the hull.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import ray_bundle
from .field import FieldConfig, TriplaneField
from .hull import carve, lattice
from .progress import Hooks
from .views import View
from .volume import OccupancyGrid, RenderConfig, render_rays


@dataclass(frozen=True)
class FitConfig:
    steps: int = 1500
    """Optimisation steps (each one batch of rays)."""
    max_seconds: float | None = None
    """Stop early once this much time has passed (None: run all steps)."""
    rays_per_step: int = 4096
    lr_planes: float = 0.02
    lr_mlp: float = 0.005
    lr_final_fraction: float = 0.1
    """Learning rates decay exponentially to this fraction of their start by the last step."""
    hull_resolution: int = 128
    """Cells per side of the hull / occupancy grid."""
    occupancy_every: int = 100
    """Steps between occupancy-grid updates from the current density."""
    occupancy_min_opacity: float = 0.01
    """A cell stays occupied while crossing it is at least this opaque."""
    prior_inside: float = 2.0
    """Density pre-activation added inside the hull."""
    prior_outside: float = -12.0
    """Density pre-activation added outside the hull."""
    foreground_fraction: float = 0.8
    """Share of each batch drawn from pixels near the object (the rest: anywhere)."""
    mask_weight: float = 0.1
    tv_weight: float = 0.01
    depth_weight: float = 0.1
    distortion_weight: float = 0.1
    """Weight of the distortion loss, which makes surfaces sharp (rays stop within a short interval)."""
    random_background: bool = True
    """Composite targets on a random colour per ray, so opacity is learnt from colour too."""
    field: FieldConfig = dc_field(default_factory=lambda: FieldConfig(density_scale=25.0))
    render: RenderConfig = dc_field(default_factory=RenderConfig)


@dataclass
class RayData:
    """All pixels of all views, flattened: origins/dirs (P, 3), rgb (P, 3), alpha (P,) or None, z-depth
    factor ``zdir`` (P,) (camera z per unit of t) and ``depth`` (P,) or None (0 = unknown)."""

    origins: torch.Tensor
    dirs: torch.Tensor
    rgb: torch.Tensor
    alpha: torch.Tensor | None
    depth: torch.Tensor | None
    zdir: torch.Tensor
    foreground: torch.Tensor
    """Indices of pixels near the object (dilated mask); all pixels when there are no masks."""


def gather_rays(views: list[View], device) -> RayData:
    origins, dirs, rgbs, alphas, depths, zdirs, near = [], [], [], [], [], [], []
    has_mask = all(v.mask is not None for v in views)
    has_depth = any(v.depth is not None for v in views)
    for v in views:
        o, d = ray_bundle(v.camera, device)
        origins.append(o.reshape(-1, 3))
        dirs.append(d.reshape(-1, 3))
        rgbs.append(torch.as_tensor(v.rgb, device=device).reshape(-1, 3))
        fwd = torch.as_tensor(v.camera.forward, dtype=torch.float32, device=device)
        zdirs.append(dirs[-1] @ fwd)
        if has_mask:
            m = torch.as_tensor(v.mask, device=device)
            alphas.append(m.reshape(-1))
            near.append(F.max_pool2d(m[None, None], 9, stride=1, padding=4).reshape(-1) > 0)
        if has_depth:
            dep = v.depth if v.depth is not None else np.zeros(v.rgb.shape[:2], np.float32)
            depths.append(torch.as_tensor(dep, device=device).reshape(-1))
    total = sum(len(o) for o in origins)
    fg = torch.cat(near).nonzero().squeeze(1) if has_mask else torch.arange(total, device=device)
    if fg.numel() == 0:
        fg = torch.arange(total, device=device)
    return RayData(
        origins=torch.cat(origins),
        dirs=torch.cat(dirs),
        rgb=torch.cat(rgbs),
        alpha=torch.cat(alphas) if has_mask else None,
        depth=torch.cat(depths) if has_depth else None,
        zdir=torch.cat(zdirs),
        foreground=fg,
    )


@dataclass
class FitResult:
    field: TriplaneField
    occupancy: OccupancyGrid
    hull: OccupancyGrid
    steps: int
    seconds: float
    loss_history: list[float]
    psnr_history: list[float]
    """Per-step photometric PSNR of the sampled rays (on their random backgrounds)."""


def hull_grid(views: list[View], resolution: int, device) -> OccupancyGrid:
    """Visual hull of the canonical views on the fit's grid (the whole box when there are no masks)."""
    if any(v.mask is None for v in views):
        return OccupancyGrid(torch.ones((resolution,) * 3, dtype=torch.bool, device=device))
    pts = lattice(np.array([-1.0] * 3), np.array([1.0] * 3), resolution, device)
    keep = carve([v.camera for v in views], [v.mask for v in views], pts)
    return OccupancyGrid(keep.view(resolution, resolution, resolution))


def density_prior(hull: OccupancyGrid, config: FitConfig) -> torch.Tensor:
    inside = F.avg_pool3d(hull.dilated(1).occupied[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return config.prior_outside + (config.prior_inside - config.prior_outside) * inside


def total_variation(planes: torch.Tensor) -> torch.Tensor:
    dx = (planes[..., :, 1:] - planes[..., :, :-1]).square().mean()
    dy = (planes[..., 1:, :] - planes[..., :-1, :]).square().mean()
    return dx + dy


@torch.no_grad()
def update_occupancy(field: TriplaneField, hull: OccupancyGrid, config: FitConfig) -> OccupancyGrid:
    centres = hull.cell_centres()
    cand = hull.occupied
    sigma = torch.zeros(cand.shape, device=cand.device)
    pts = centres[cand]
    sigma[cand] = torch.cat([field.density(p) for p in pts.split(config.render.chunk)]) if len(pts) else sigma[cand]
    cell = 2.0 / hull.resolution
    threshold = -math.log(1 - config.occupancy_min_opacity) / cell
    occupied = OccupancyGrid(sigma > threshold).dilated(1)
    return OccupancyGrid(occupied.occupied & cand)


def fit(
    views: list[View], config: FitConfig, device, hooks: Hooks | None = None, field: TriplaneField | None = None
) -> FitResult:
    """Optimise a triplane field (fresh, or the one given, e.g. from a generator) against canonical views."""
    hooks = hooks or Hooks()
    start = time.perf_counter()
    rays = gather_rays(views, device)
    hull = hull_grid(views, config.hull_resolution, device)
    if field is None:
        field = TriplaneField(config.field).to(device)
        field.set_density_prior(density_prior(hull, config))
    occupancy = hull
    groups = [
        {"params": [field.planes], "lr": config.lr_planes},
        {"params": list(field.mlp_sigma.parameters()) + list(field.mlp_color.parameters()), "lr": config.lr_mlp},
    ]
    optimiser = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    gamma = config.lr_final_fraction ** (1.0 / max(config.steps, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma)
    n_fg = int(config.rays_per_step * config.foreground_fraction)
    total_pixels = rays.origins.shape[0]
    losses, psnrs = [], []
    step = 0
    for step in range(1, config.steps + 1):
        idx = torch.cat(
            [
                rays.foreground[torch.randint(len(rays.foreground), (n_fg,), device=device)],
                torch.randint(total_pixels, (config.rays_per_step - n_fg,), device=device),
            ]
        )
        if rays.alpha is not None and config.random_background:
            bg = torch.rand(len(idx), 3, device=device)
        else:
            bg = torch.ones(len(idx), 3, device=device)
        target = rays.rgb[idx]
        if rays.alpha is not None:
            a = rays.alpha[idx, None]
            target = target * a + bg * (1 - a)
        out = render_rays(field, rays.origins[idx], rays.dirs[idx], occupancy, config.render, bg, jitter=True)
        mse = F.mse_loss(out.rgb, target)
        loss = mse + config.tv_weight * total_variation(field.planes) + config.distortion_weight * out.distortion
        if rays.alpha is not None and config.mask_weight > 0:
            loss = loss + config.mask_weight * F.mse_loss(out.opacity, rays.alpha[idx])
        if rays.depth is not None and config.depth_weight > 0:
            d = rays.depth[idx]
            known = d > 0
            if bool(known.any()):
                zpred = out.depth * rays.zdir[idx]
                loss = loss + config.depth_weight * (zpred[known] - d[known]).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        psnrs.append(float(-10 * torch.log10(mse.detach().clamp_min(1e-10))))
        if step % config.occupancy_every == 0:
            occupancy = update_occupancy(field, hull, config)
        if step % 10 == 0 or step == config.steps:
            recent = float(np.mean(psnrs[-50:]))
            hooks.report("fit", step, config.steps, f"psnr {recent:.2f}")
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            break
    occupancy = update_occupancy(field, hull, config)
    return FitResult(
        field=field,
        occupancy=occupancy,
        hull=hull,
        steps=step,
        seconds=time.perf_counter() - start,
        loss_history=losses,
        psnr_history=psnrs,
    )
