"""Bake a colour field onto a mesh: per-vertex colours, or a UV atlas (xatlas) with a texture image.

The colour field is any callable from world points to sRGB; it is evaluated without gradients, in chunks. The
geometry of the mesh is never changed: a UV bake stores per-corner texture coordinates for the original faces, so
seams (where xatlas splits vertices) live in ``uvs`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import raster
from .mesh import Mesh
from .progress import Hooks

ColorFn = Callable[[torch.Tensor], torch.Tensor]
"""World points (P, 3) → sRGB colours (P, 3) in [0, 1]. Called with at most ``BakeConfig.chunk`` points at once."""


@dataclass(frozen=True)
class BakeConfig:
    """How to bake."""

    texture: str = "vertex"
    """``"vertex"`` (per-vertex colours) or ``"uv"`` (xatlas unwrap + a ``texture_size``² texture)."""
    texture_size: int = 1024
    """Side of the square UV texture in texels (``"uv"`` only)."""
    dilation: int = 8
    """How many texels the colours are grown past chart borders (fills seams for bilinear/mip sampling)."""
    chunk: int = 65536
    """Points per ``color_fn`` call (memory vs. speed; each chunk is one progress report)."""


def bake(mesh: Mesh, color_fn: ColorFn, config: BakeConfig, hooks: Hooks | None = None) -> Mesh:
    """Return ``mesh`` (same vertices and faces) with colours from ``color_fn``.

    ``"vertex"``: ``vertex_colors`` (N, 3) float32. ``"uv"``: ``uvs`` (M, 3, 2) float32 in [0, 1] (v up) and
    ``texture`` (T, T, 3) float32 (row 0 = top, i.e. v = 1); ``vertex_colors`` is None. Colours are clamped to
    [0, 1]. Progress is reported per chunk as stage ``"bake"``.
    """
    if config.texture == "vertex":
        colors = evaluate_colors(color_fn, mesh.vertices.detach(), config.chunk, hooks)
        return Mesh(mesh.vertices, mesh.faces, vertex_colors=colors)
    if config.texture == "uv":
        if hooks is not None:
            hooks.report("bake", 0, 1, "unwrapping UVs")
        uvs = unwrap_uvs(mesh.vertices, mesh.faces, config.texture_size)
        texture = bake_texture(mesh, uvs, color_fn, config.texture_size, config.dilation, config.chunk, hooks)
        return Mesh(mesh.vertices, mesh.faces, vertex_colors=None, uvs=uvs, texture=texture)
    raise ValueError(f"unknown bake texture mode {config.texture!r}; use 'vertex' or 'uv'")


def evaluate_colors(color_fn: ColorFn, points: torch.Tensor, chunk: int, hooks: Hooks | None = None) -> torch.Tensor:
    """``color_fn`` over (P, 3) points in chunks, without gradients → (P, 3) float32 clamped to [0, 1]."""
    chunk = max(1, int(chunk))
    P = int(points.shape[0])
    out = torch.zeros((P, 3), dtype=torch.float32, device=points.device)
    total = max(1, math.ceil(P / chunk))
    with torch.no_grad():
        for n, start in enumerate(range(0, P, chunk)):
            if hooks is not None:
                hooks.report("bake", n, total, "colours")
            values = color_fn(points[start : start + chunk])
            out[start : start + chunk] = values.to(device=points.device, dtype=torch.float32).clamp(0.0, 1.0)
    if hooks is not None:
        hooks.report("bake", total, total, "colours")
    return out


def unwrap_uvs(vertices: torch.Tensor, faces: torch.Tensor, texture_size: int = 1024) -> torch.Tensor:
    """xatlas UV atlas for the mesh as per-corner coordinates (M, 3, 2) float32 in [0, 1], for the ORIGINAL faces.

    xatlas splits vertices along seams and returns its own faces; it keeps the input face order, which is checked
    (each of its faces must reference split copies of the same original vertices). If that check ever fails, faces
    are matched by their vertex triples instead; faces xatlas dropped (degenerate ones) get all-zero UVs.
    """
    import xatlas

    v = np.ascontiguousarray(vertices.detach().cpu().numpy(), dtype=np.float32)
    f_orig = faces.detach().cpu().numpy().astype(np.int64)
    f = np.ascontiguousarray(f_orig, dtype=np.uint32)
    M = f.shape[0]
    if M == 0:
        return torch.zeros((0, 3, 2), dtype=torch.float32, device=vertices.device)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = 2 if texture_size >= 256 else 1
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # packing spilled into several pages: fall back to one automatically sized atlas
        vmapping, indices, uv = xatlas.parametrize(v, f)
    else:
        vmapping, indices, uv = atlas[0]
    vmapping = vmapping.astype(np.int64)
    indices = indices.astype(np.int64)
    corners = np.zeros((M, 3, 2), dtype=np.float32)
    if indices.shape == f_orig.shape and np.array_equal(vmapping[indices], f_orig):
        corners = uv[indices].astype(np.float32)
    else:
        lookup = {tuple(row): n for n, row in enumerate(vmapping[indices])}
        for n, row in enumerate(f_orig):
            k = lookup.get(tuple(row))
            if k is not None:
                corners[n] = uv[indices[k]]
    return torch.from_numpy(np.clip(corners, 0.0, 1.0)).to(vertices.device)


def uv_to_pixels(uvs: torch.Tensor, texture_size: int) -> torch.Tensor:
    """UVs (..., 2) (v up) → texture pixel coordinates (..., 2) (x = column, y = row, corner convention)."""
    T = float(texture_size)
    return torch.stack([uvs[..., 0] * T, (1.0 - uvs[..., 1]) * T], dim=-1)


def bake_texture(
    mesh: Mesh,
    uvs: torch.Tensor,
    color_fn: ColorFn,
    texture_size: int,
    dilation: int = 8,
    chunk: int = 65536,
    hooks: Hooks | None = None,
) -> torch.Tensor:
    """Rasterise the faces in UV space, evaluate ``color_fn`` at each covered texel's surface point, dilate.

    Returns (T, T, 3) float32; texels farther than ``dilation`` from every chart stay 0.
    """
    T = int(texture_size)
    device = mesh.vertices.device
    M = mesh.num_faces
    pts = uv_to_pixels(uvs.to(device=device, dtype=torch.float32), T).reshape(-1, 2)
    tris = torch.arange(3 * M, device=device, dtype=torch.int64).reshape(M, 3)
    if hooks is not None:
        hooks.report("bake", 0, 1, "rasterising the atlas")
    frags = raster.rasterize_2d(pts, tris, T, T)
    corners = mesh.vertices.detach().to(torch.float32)[mesh.faces]  # (M, 3, 3) world positions per corner
    positions = raster.interpolate(corners, tris, frags)  # (T, T, 3)
    mask = frags.mask
    texture = torch.zeros((T, T, 3), dtype=torch.float32, device=device)
    texture[mask] = evaluate_colors(color_fn, positions[mask], chunk, hooks)
    return dilate(texture, mask, dilation)


def dilate(image: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Grow ``image`` (H, W, C) outward from ``mask`` (H, W) bool by ``iterations`` texels.

    Each pass gives every still-empty texel with at least one filled 8-neighbour the mean of those neighbours.
    Filled texels never change.
    """
    if iterations <= 0:
        return image
    img = image.permute(2, 0, 1).unsqueeze(0).clone()  # (1, C, H, W)
    filled = mask.to(img.dtype)[None, None]
    kernel = torch.ones((1, 1, 3, 3), dtype=img.dtype, device=img.device)
    C = img.shape[1]
    for _ in range(int(iterations)):
        weight = F.conv2d(filled, kernel, padding=1)
        total = F.conv2d((img * filled).reshape(C, 1, *img.shape[2:]), kernel, padding=1).reshape(1, C, *img.shape[2:])
        grow = (weight > 0) & (filled == 0)
        if not bool(grow.any()):
            break
        img = torch.where(grow, total / weight.clamp_min(1.0), img)
        filled = torch.where(grow, torch.ones_like(filled), filled)
    return img[0].permute(1, 2, 0).contiguous()
