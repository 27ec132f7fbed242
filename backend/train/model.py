"""The trained network and its two losses.

:class:`TrainModel` holds the generator and the decoder (the official module layout, so the weights save as a
``gtr`` checkpoint unchanged) and computes a step's loss in ``forward``, so that DistributedDataParallel sees the
whole computation.

- Stage 1 (NeRF): generator → batched triplanes → dense volume rendering of the supervision patches (the official
  sampler, :func:`backend.volume.render_rays_dense`) → MSE on colour and opacity + (1 − SSIM).
- Stage 2 (mesh): per object, density on a grid → the σ = ``mesh_level`` surface by differentiable marching
  cubes (:func:`backend.gtr.geometry.extract_mesh`) → colours from the colour MLP at the vertices → the
  differentiable mesh renderer (:func:`backend.diff_render.render`) → MSE on colour and coverage, L1 on depth,
  (1 − cos) on normals. The gradients reach the generator through the vertices (density) and their colours.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..diff_render import render
from ..field import density_grid
from ..gtr.checkpoint import Weights
from ..gtr.config import ModelConfig
from ..gtr.decoder import GTRField
from ..gtr.generator import Generator
from ..gtr.geometry import extract_mesh
from ..metrics import structural_similarity
from ..volume import render_rays_dense
from .config import TrainConfig
from .data import Batch
from .lpips import LPIPS


class PerceptualTerm:
    """Stage 1's perceptual loss on image batches (N, 3, H, W): LPIPS when given its network, else 1 − SSIM.

    Not an ``nn.Module`` on purpose: the LPIPS network is never trained, saved or synchronised between processes.
    """

    def __init__(self, lpips: LPIPS | None = None):
        self.lpips = lpips
        self.name = "lpips" if lpips is not None else "1-ssim"

    def __call__(self, render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.lpips is not None:
            return self.lpips(render, target).mean()
        return 1 - structural_similarity(render, target)


INITIAL_DENSITY_BIAS = -2.0
"""Pre-activation bias of a fresh density MLP's output (a checkpoint's weights replace it)."""


class TrainModel(nn.Module):
    """Generator + decoder (``generator.*`` and ``field.*`` keys, as :class:`backend.gtr.checkpoint.Weights`)."""

    def __init__(self, config: TrainConfig, perceptual: PerceptualTerm | None = None):
        super().__init__()
        self.config = config
        self.perceptual = perceptual or PerceptualTerm()
        self.generator = Generator(config.model.generator)
        self.field = GTRField(config.model.decoder)
        self.generator.gradient_checkpointing = config.gradient_checkpointing
        with torch.no_grad():  # start from a nearly empty volume (σ = softplus(−2) ≈ 0.13), not a fog
            self.field.decoder.field.mlp_sigma.layers[-1].bias.fill_(INITIAL_DENSITY_BIAS)

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    def weights(self, source: str) -> Weights:
        """The current weights as a ``gtr`` checkpoint (float32, CPU)."""
        as_cpu = lambda m: {k: v.detach().float().cpu().clone() for k, v in m.state_dict().items()}
        return Weights(as_cpu(self.generator), as_cpu(self.field), self.config.model, source)

    def load_weights(self, weights: Weights) -> None:
        self.generator.load_state_dict(weights.generator)
        self.field.load_state_dict(weights.field)

    def forward(self, batch: Batch, autocast: contextlib.AbstractContextManager | None = None) -> dict:
        """The step's losses: ``loss`` (the weighted sum, a scalar tensor) and its float terms, plus
        ``preview`` (detached renders for the logs)."""
        with autocast or contextlib.nullcontext():
            planes = self.generator(batch.inputs)  # (B, 3, K, R, R)
        planes = planes.float()
        if self.config.stage == 1:
            return self._stage1(planes, batch)
        return self._stage2(planes, batch)

    def _stage1(self, planes: torch.Tensor, batch: Batch) -> dict:
        c = self.config
        field = self.field.on(planes)
        out = render_rays_dense(field, batch.origins, batch.dirs, samples=c.samples_per_ray,
                                min_near=c.model.min_near)
        mse = F.mse_loss(out.rgb, batch.rgb)
        mask = F.mse_loss(out.opacity.squeeze(-1), batch.mask)
        V, P = batch.patches
        as_images = lambda x: x.reshape(x.shape[0] * V, P, P, 3).permute(0, 3, 1, 2)
        perceptual = self.perceptual(as_images(out.rgb), as_images(batch.rgb))
        loss = c.image_weight * mse + c.mask_weight * mask + c.perceptual_weight * perceptual
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
        preview = torch.stack([as_images(batch.rgb)[0], as_images(out.rgb.detach())[0]])
        mse, mask, perceptual = float(mse.detach()), float(mask.detach()), float(perceptual.detach())
        return {"loss": loss, "mse": mse, "mask": mask, self.perceptual.name: perceptual, "psnr": float(psnr),
                "preview": preview}

    def _stage2(self, planes: torch.Tensor, batch: Batch) -> dict:
        c = self.config
        densities = density_grid(self.field.on(planes), c.mesh_resolution, grad=True)  # (B, G, G, G)
        terms = {"mse": [], "mask": [], "depth": [], "normal": []}
        faces_total, preview = 0, None
        loss = planes.new_zeros(())
        for b in range(planes.shape[0]):
            density = densities[b]
            verts, faces = extract_mesh(density, c.model.mesh_level)
            if faces.shape[0] == 0:
                # No surface yet: raise the densest point towards the level, so that one appears.
                loss = loss + (F.relu(c.model.mesh_level - density.amax()) / c.model.mesh_level) / planes.shape[0]
                continue
            faces_total += faces.shape[0]
            colours = self.field.on(planes[b]).color(verts)
            out = render(verts, faces, batch.cameras[b], attributes=colours, smooth_normals=True)
            image = out.attributes + (1 - out.mask[..., None])  # on white
            mse = F.mse_loss(image, batch.rgb[b])
            mask = F.mse_loss(out.mask, batch.mask[b])
            total = c.image_weight * mse + c.mask_weight * mask
            terms["mse"].append(float(mse.detach()))
            terms["mask"].append(float(mask.detach()))
            seen = (out.triangle_id >= 0) & (batch.mask[b] > 0.5)
            if batch.depth is not None:
                both = seen & (batch.depth[b] > 0)
                if both.any():
                    depth = (out.depth - batch.depth[b]).abs()[both].mean()
                    total = total + c.depth_weight * depth
                    terms["depth"].append(float(depth.detach()))
            if batch.normals is not None:
                both = seen & (batch.normals[b].abs().sum(-1) > 0)
                if both.any():
                    cosine = (out.normals * batch.normals[b]).sum(-1)[both]
                    normal = (1 - cosine).mean()
                    total = total + c.normal_weight * normal
                    terms["normal"].append(float(normal.detach()))
            loss = loss + total / planes.shape[0]
            if preview is None:
                preview = torch.stack([batch.rgb[b][0], image[0].detach().clamp(0, 1)]).permute(0, 3, 1, 2)
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        result = {"loss": loss, "faces": faces_total, **{k: mean(v) for k, v in terms.items()}}
        if terms["mse"]:
            result["psnr"] = -10 * math.log10(max(result["mse"], 1e-10))
        result["preview"] = preview
        return result
