"""Stage 6 — texture refinement: fit the colour field exactly on the mesh surface (GTR's per-instance refinement).

The mesh is rasterised into the input views; each covered pixel gives a surface point and its target colour, and
the triplane and the colour MLP are optimised so the colour field is right exactly where the mesh is (colours read
at the vertices straight after a volume fit sit slightly off the surface and look speckled). Both recipes train
exactly the triplane and the colour MLP, whatever ``requires_grad`` state they arrive with (a loaded model comes
frozen), and restore that state afterwards; the density MLP never changes. Give them :func:`texture_copy` of a field
that must stay as it is.

Two recipes share the parts:

- ``fit`` (:class:`RefineConfig`, :func:`refine_texture`): random batches of the surface points seen by input pixels
  (not silhouette pixels), L2, Adam.
- official GTR (:class:`GTRRefineConfig`, :func:`refine_texture_gtr`): every view rasterised once at
  ``raster_size``²; each iteration the colour MLP paints the covered pixels on a white image, the image is resized
  to the input size (bilinear) and the mean L1 error against the inputs (on white) updates the triplane (constant
  lr 0.15) and the colour MLP (AdamW, cosine schedule, grad-norm clip 1). The official run wraps the loss in a
  GradScaler whose power-of-two scale is exact in float32; here a step whose gradients are not finite is skipped,
  which is the only effect the scaler has.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cameras import Camera
from .field import TriplaneField, requires_grad
from .fit import seeded
from .mesh import Mesh
from .progress import Hooks
from .raster import interpolate, rasterize
from .views import View


def texture_copy(field: TriplaneField) -> TriplaneField:
    """The field to refine the texture on: its own triplane (a trainable parameter copy, so the refiners'
    :meth:`~TriplaneField.trainable_planes` copies nothing more) and colour MLP (a deep copy), sharing the density
    MLP and prior (refinement never changes them). ``field`` itself stays as the fit (or the generator) left it, so
    what is measured of it (e.g. volume PSNR before meshing) is not changed by refinement."""
    planes = nn.Parameter(field.planes.detach().clone())
    copied = TriplaneField(field.config, planes, mlp_sigma=field.mlp_sigma, mlp_color=copy.deepcopy(field.mlp_color))
    copied.set_density_prior(field.density_prior)
    return copied


@torch.no_grad()
def surface_map(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """The mesh rasterised into ``camera`` (pixel-centre coverage, no antialiasing): surface point per pixel
    (H, W, 3) and coverage (H, W) bool."""
    frags = rasterize(vertices, faces, camera)
    return interpolate(vertices, faces, frags), frags.mask


# --------------------------------------------------------------------------------------------------- fit recipe


@dataclass(frozen=True)
class RefineConfig:
    iterations: int = 300
    """Optimisation steps (0 disables refinement)."""
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
    seed: int = 0
    """Seed of the points drawn (the same inputs give the same refinement)."""


@dataclass
class SurfaceSamples:
    """Surface points seen by input pixels: ``points`` (P, 3) canonical, ``colors`` (P, 3) target sRGB."""

    points: torch.Tensor
    colors: torch.Tensor


def surface_samples(
    mesh: Mesh, views: list[View], config: RefineConfig, device, hooks: Hooks | None = None
) -> SurfaceSamples:
    """Rasterise the mesh into every view (one progress report per view, stage ``refine``)."""
    hooks = hooks or Hooks()
    points, colors = [], []
    for n, view in enumerate(views):
        hooks.report("refine", n, len(views), f"surface points {n + 1}/{len(views)}")
        surface, covered = surface_map(mesh.vertices, mesh.faces, view.camera)
        if view.mask is not None:
            covered = covered & (torch.as_tensor(view.mask, device=covered.device) >= config.min_mask)
        xyz = surface[covered]
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
    """The ``fit`` recipe: optimise the triplane and colour MLP of ``field`` in place against the views, on the mesh
    surface."""
    with seeded(config.seed, field.planes.device):
        return _refine_texture(field, mesh, views, config, hooks or Hooks())


def _refine_texture(field: TriplaneField, mesh: Mesh, views: list[View], config: RefineConfig, hooks: Hooks):
    start = time.perf_counter()
    if config.iterations <= 0:
        return RefineResult(0, 0.0, float("nan"))
    device = field.planes.device
    with torch.no_grad():
        samples = surface_samples(mesh.detached(), views, config, device, hooks)
    if len(samples.points) == 0:
        return RefineResult(0, time.perf_counter() - start, float("nan"))
    planes = field.trainable_planes()
    mlp_params = list(field.mlp_color.parameters())
    loss_value = float("nan")
    it = 0
    with requires_grad([planes, *mlp_params]):
        optimiser = torch.optim.Adam(
            [{"params": [planes], "lr": config.lr_planes}, {"params": mlp_params, "lr": config.lr_mlp}],
            betas=(0.9, 0.99),
        )
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
        optimiser.zero_grad(set_to_none=True)
    return RefineResult(it, time.perf_counter() - start, loss_value)


# ------------------------------------------------------------------------------------------ official GTR recipe


@dataclass(frozen=True)
class GTRRefineConfig:
    """The official GTR texture refinement (``refine_texture`` of the release) and its optimiser."""

    iterations: int = 50
    """Refinement steps (official: 50)."""
    raster_size: int = 1024
    """Rasterisation side in the input views; the prediction is resized to the input size for the loss."""
    code_lr: float = 0.15
    """Learning rate of the triplane (constant)."""
    lr: float = 1e-4
    """Peak learning rate of the colour MLP (cosine schedule below)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.05
    """AdamW weight decay (colour-MLP weights and the triplane; not the biases)."""
    grad_clip: float = 1.0
    """Total-norm clip on the colour-MLP gradients (the triplane's are not clipped)."""
    warm_up_end: int = 1
    """Scheduler steps of linear warm-up of the colour-MLP learning rate."""
    schedule_alpha: float = 0.05
    """Final colour-MLP learning rate as a fraction of ``lr`` (cosine decay)."""
    schedule_steps: int = 500
    """Scheduler steps over which the cosine decay runs."""

    def mlp_lr(self, step: int) -> float:
        """Colour-MLP learning rate at scheduler step ``step`` (0-based): zero during warm-up, then cosine decay
        from ``lr`` to ``schedule_alpha · lr`` over ``schedule_steps``."""
        if step < self.warm_up_end:
            factor = step / self.warm_up_end
        else:
            progress = (step - self.warm_up_end) / (self.schedule_steps - self.warm_up_end)
            factor = self.schedule_alpha + (1 - self.schedule_alpha) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * factor


@dataclass(frozen=True)
class StepLRs:
    """Learning rates of the optimiser's parameter groups, read from the optimiser at one step."""

    mlp_decay: float
    """Colour-MLP weights (weight decay on)."""
    mlp_no_decay: float
    """Colour-MLP biases (no weight decay)."""
    triplane: float


@dataclass
class RefineTrace:
    losses: list[float] = field(default_factory=list)
    """L1 loss of each iteration, before its update."""
    lrs: list[StepLRs] = field(default_factory=list)
    """The learning rates each iteration's step used (skipped steps have none)."""
    skipped: int = 0
    seconds: float = 0.0


def surface_images(
    mesh: Mesh, cameras: list[Camera], size: int, hooks: Hooks | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`surface_map` of each camera at ``size``² (one progress report and cancel point per view): surface
    points (V, size, size, 3) and coverage (V, size, size, 1) in {0, 1}."""
    hooks = hooks or Hooks()
    points, covered = [], []
    for n, camera in enumerate(cameras):
        hooks.report("refine", n, len(cameras), f"surface points {n + 1}/{len(cameras)}")
        p, c = surface_map(mesh.vertices, mesh.faces, camera.scaled(size, size))
        points.append(p)
        covered.append(c.to(mesh.vertices.dtype)[..., None])
    return torch.stack(points), torch.stack(covered)


def _optimiser(field: TriplaneField, planes: torch.Tensor, settings: GTRRefineConfig) -> torch.optim.AdamW:
    weights = [p for n, p in field.mlp_color.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in field.mlp_color.named_parameters() if not n.endswith("weight")]
    return torch.optim.AdamW(
        [
            {"params": weights, "weight_decay": settings.weight_decay, "scheduled": True, "name": "mlp_decay"},
            {"params": biases, "weight_decay": 0.0, "scheduled": True, "name": "mlp_no_decay"},
            {"params": [planes], "weight_decay": settings.weight_decay, "lr": settings.code_lr,
             "scheduled": False, "name": "triplane"},
        ],
        lr=settings.lr,
        betas=settings.betas,
        eps=settings.eps,
    )


def render_colors(field: TriplaneField, tex_pts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(V, R, R, 3): the colour MLP at covered pixels, white elsewhere."""
    covered = mask[..., 0] > 0.5
    pred = torch.ones_like(tex_pts)
    pred[covered] = field.color(tex_pts[covered])
    return pred


def refine_texture_gtr(
    field: TriplaneField,
    tex_pts: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    settings: GTRRefineConfig,
    hooks: Hooks | None = None,
) -> RefineTrace:
    """The official recipe: optimise the triplane and colour MLP of ``field`` in place so the mesh colours match
    ``targets`` (V, H, W, 3), the input images on white in [0, 1]. ``tex_pts``/``mask`` from :func:`surface_images`.
    Given (e.g. generated) planes are first replaced by a detached copy (:meth:`TriplaneField.trainable_planes`).
    """
    hooks = hooks or Hooks()
    trace = RefineTrace()
    start = time.perf_counter()
    planes = field.trainable_planes()
    mlp_params = list(field.mlp_color.parameters())
    H, W = targets.shape[1:3]
    with requires_grad([planes, *mlp_params]):
        opt = _optimiser(field, planes, settings)
        for it in range(settings.iterations):
            hooks.report("refine", it, settings.iterations, "texture refinement")
            opt.zero_grad(set_to_none=True)
            pred = render_colors(field, tex_pts, mask)
            if pred.shape[1:3] != (H, W):
                pred = F.interpolate(pred.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
                pred = pred.permute(0, 2, 3, 1)
            loss = (pred - targets).abs().mean()
            loss.backward()
            trace.losses.append(float(loss.detach()))
            grads = [p.grad for p in mlp_params + [planes] if p.grad is not None]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                trace.skipped += 1  # what the official GradScaler does with an overflow: no step, no scheduler step
                continue
            torch.nn.utils.clip_grad_norm_(mlp_params, settings.grad_clip)
            mlp_lr = settings.mlp_lr(it - trace.skipped)
            for group in opt.param_groups:
                if group["scheduled"]:
                    group["lr"] = mlp_lr
            trace.lrs.append(StepLRs(**{g["name"]: g["lr"] for g in opt.param_groups}))
            opt.step()
        opt.zero_grad(set_to_none=True)
    hooks.report("refine", settings.iterations, settings.iterations, "texture refinement")
    trace.seconds = time.perf_counter() - start
    return trace
