"""Stage 6 — GTR-style texture refinement: fit the colour field on the mesh surface.

The mesh is rasterised into every input view; each covered pixel gives a surface point and its target colour.
The triplane and the colour MLP are optimised with L2 so the colour field is right exactly where the mesh is
(colours read at mesh vertices straight after the volume fit sit slightly off the surface and look speckled).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from .field import TriplaneField
from .mesh import Mesh
from .progress import Hooks
from .raster import interpolate, rasterize
from .views import View


@dataclass(frozen=True)
class RefineConfig:
    iterations: int = 300
    """Optimisation steps (0 disables refinement)."""
    max_seconds: float | None = None
    """Stop early after this much time."""
    points_per_step: int = 32768
    """Surface points (each seen by an input pixel) in each step's batch."""
    lr_planes: float = 0.01
    """Adam learning rate of the triplane features."""
    lr_mlp: float = 0.002
    """Adam learning rate of the colour MLP."""
    min_mask: float = 0.5
    """Pixels whose mask is below this are not used (silhouette pixels mix object and background)."""
    max_points: int = 4_000_000
    """Upper bound on the surface points kept from all views (random subset beyond it)."""


@dataclass
class SurfaceSamples:
    """Surface points seen by input pixels: ``points`` (P, 3) canonical, ``colors`` (P, 3) target sRGB."""

    points: torch.Tensor
    colors: torch.Tensor


def texture_copy(field: TriplaneField) -> TriplaneField:
    """The field to refine the texture on: its own triplane (a detached leaf copy) and colour MLP (a deep copy),
    sharing the density MLP and prior (refinement never changes them). ``field`` itself stays as the fit (or the
    generator) left it, so what is measured of it (e.g. volume PSNR before meshing) is not changed by refinement."""
    copied = TriplaneField(
        field.config,
        planes=field.planes.detach().clone().requires_grad_(True),
        mlp_sigma=field.mlp_sigma,
        mlp_color=copy.deepcopy(field.mlp_color),
    )
    copied.set_density_prior(field.density_prior)
    return copied


def surface_samples(
    mesh: Mesh, views: list[View], config: RefineConfig, device, hooks: Hooks | None = None
) -> SurfaceSamples:
    """Rasterise the mesh into every view (one progress report per view, stage ``refine``)."""
    hooks = hooks or Hooks()
    points, colors = [], []
    for n, view in enumerate(views):
        hooks.report("refine", n, len(views), f"surface points {n + 1}/{len(views)}")
        frags = rasterize(mesh.vertices, mesh.faces, view.camera)
        covered = frags.mask
        if view.mask is not None:
            covered = covered & (torch.as_tensor(view.mask, device=covered.device) >= config.min_mask)
        xyz = interpolate(mesh.vertices, mesh.faces, frags)[covered]
        points.append(xyz.to(device))
        colors.append(torch.as_tensor(view.rgb, device=covered.device)[covered].to(device))
    pts, cols = torch.cat(points), torch.cat(colors)
    if len(pts) > config.max_points:
        pick = torch.randperm(len(pts), device=device)[: config.max_points]
        pts, cols = pts[pick], cols[pick]
    return SurfaceSamples(pts, cols)


@dataclass
class RefineResult:
    iterations: int
    seconds: float
    final_loss: float


def refine_texture(
    field: TriplaneField, mesh: Mesh, views: list[View], config: RefineConfig, hooks: Hooks | None = None
) -> RefineResult:
    """Optimise ``field.planes`` and ``field.mlp_color`` in place against the views, on the mesh surface (give it
    :func:`texture_copy` of a field that must stay as it is)."""
    hooks = hooks or Hooks()
    start = time.perf_counter()
    if config.iterations <= 0:
        return RefineResult(0, 0.0, float("nan"))
    device = field.planes.device
    with torch.no_grad():
        samples = surface_samples(mesh.detached(), views, config, device, hooks)
    if len(samples.points) == 0:
        return RefineResult(0, time.perf_counter() - start, float("nan"))
    optimiser = torch.optim.Adam(
        [
            {"params": [field.planes], "lr": config.lr_planes},
            {"params": list(field.mlp_color.parameters()), "lr": config.lr_mlp},
        ],
        betas=(0.9, 0.99),
    )
    loss_value = float("nan")
    it = 0
    for it in range(1, config.iterations + 1):
        idx = torch.randint(len(samples.points), (config.points_per_step,), device=device)
        pred = field.color(samples.points[idx])
        loss = (pred - samples.colors[idx]).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_value = float(loss.detach())
        if it % 10 == 0 or it == config.iterations:
            hooks.report("refine", it, config.iterations, f"mse {loss_value:.5f}")
        else:
            hooks.check_cancel()
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            break
    return RefineResult(it, time.perf_counter() - start, loss_value)
