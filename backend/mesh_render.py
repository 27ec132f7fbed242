"""Render a coloured mesh into a camera (for previews, metrics and evaluation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cameras import Camera
from .mesh import Mesh
from .raster import interpolate, rasterize


def render_mesh(mesh: Mesh, camera: Camera, background=(1.0, 1.0, 1.0), supersample: int = 1) -> torch.Tensor:
    """(H, W, 3) float32 sRGB image of ``mesh`` (vertex colours or UV texture) over a flat background.

    ``supersample`` = s renders s² samples per pixel and averages them (anti-aliased edges, like the renders it is
    compared with); 1 point-samples pixel centres. A mesh without colours renders mid-grey.
    """
    if supersample > 1:
        big = render_mesh(mesh, camera.scaled(camera.width * supersample, camera.height * supersample), background)
        return F.avg_pool2d(big.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
    with torch.no_grad():
        frags = rasterize(mesh.vertices, mesh.faces, camera)
        bg = torch.as_tensor(background, dtype=torch.float32, device=frags.mask.device)
        if mesh.uvs is not None and mesh.texture is not None:
            uv = interpolate(mesh.uvs.to(frags.mask.device), mesh.faces, frags)  # (H, W, 2), v up
            grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], -1)[None]
            tex = mesh.texture.to(frags.mask.device).permute(2, 0, 1)[None]
            color = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
            color = color.permute(1, 2, 0)
        elif mesh.vertex_colors is not None:
            color = interpolate(mesh.vertex_colors.to(frags.mask.device), mesh.faces, frags)
        else:
            color = torch.full((*frags.mask.shape, 3), 0.6, device=frags.mask.device)
        return torch.where(frags.mask[..., None], color.clamp(0, 1), bg)


def composite(rgb, mask, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """An input view's colours over a flat background: (H, W, 3) float32."""
    rgb = torch.as_tensor(rgb, dtype=torch.float32)
    if mask is None:
        return rgb
    a = torch.as_tensor(mask, dtype=torch.float32)[..., None]
    return rgb * a + torch.as_tensor(background, dtype=torch.float32) * (1 - a)


def coverage(mesh: Mesh, camera: Camera, supersample: int = 2) -> torch.Tensor:
    """(H, W) float32 fraction of each pixel the mesh covers (``supersample``² point samples per pixel)."""
    big = camera.scaled(camera.width * supersample, camera.height * supersample)
    with torch.no_grad():
        hit = rasterize(mesh.vertices, mesh.faces, big).mask.float()
    return F.avg_pool2d(hit[None, None], supersample)[0, 0].cpu()
