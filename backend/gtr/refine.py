"""The official per-instance texture refinement (``refine_texture`` with ``learn_code=True``).

The mesh is rasterised once into every input view (surface point and coverage per pixel). Then, each iteration,
the colour MLP is evaluated at the covered pixels' surface points on a white image, the image is resized to the
input size (bilinear), and the mean L1 error against the inputs (composited on white) updates the triplane (a free
parameter, constant lr 0.15) and the colour MLP (AdamW, cosine schedule, grad-norm clip 1). Exactly these two are
trained, whatever ``requires_grad`` state they arrive with (a loaded model comes frozen); their states are restored
afterwards. Density MLP and generator stay fixed. The official run wraps the loss in a GradScaler whose
power-of-two scale is exact in float32; here a step whose gradients are not finite is skipped, which is the only
effect the scaler has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..cameras import Camera
from ..field import TriplaneField, requires_grad
from ..progress import Hooks
from ..raster import interpolate, rasterize
from .config import RefineSettings


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


@torch.no_grad()
def surface_points(
    vertices: torch.Tensor, faces: torch.Tensor, cameras: list[Camera], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise the mesh into each camera at ``size``² (pixel-centre coverage, no antialiasing).

    Returns the surface points (V, size, size, 3) and the coverage mask (V, size, size, 1) in {0, 1}.
    """
    pts, masks = [], []
    for cam in cameras:
        cam = cam.scaled(size, size)
        frags = rasterize(vertices, faces, cam)
        pts.append(interpolate(vertices, faces, frags))
        masks.append(frags.mask.to(vertices.dtype)[..., None])
    return torch.stack(pts), torch.stack(masks)


def _optimiser(field: TriplaneField, planes: torch.Tensor, settings: RefineSettings) -> torch.optim.AdamW:
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


def refine(
    field: TriplaneField,
    tex_pts: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    settings: RefineSettings,
    hooks: Hooks | None = None,
) -> RefineTrace:
    """Optimise ``field.planes`` and ``field.mlp_color`` in place so the mesh colours match ``targets``.

    ``tex_pts``/``mask`` from :func:`surface_points`; ``targets`` (V, H, W, 3) input images on white in [0, 1].
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
