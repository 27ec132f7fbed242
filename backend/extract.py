"""Stage 5 — density grid → differentiable marching cubes → cleaned mesh (canonical frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import ray_bundle
from .field import TriplaneField
from .hull import project_points
from .marching_cubes import marching_cubes
from .mesh import Mesh
from .progress import Hooks
from .views import View
from .volume import OccupancyGrid, RenderConfig, render_rays


@dataclass(frozen=True)
class ExtractConfig:
    resolution: int = 128
    """Lattice points per side of the density grid over [-1, 1]³."""
    level: float = 3.0
    """Iso-level of the density σ (per canonical unit) that becomes the surface."""
    blur_voxels: float = 1.0
    """Gaussian blur (σ in voxels) of the log-density before marching cubes; 0 disables it."""
    min_component_ratio: float = 0.05
    """Connected components with fewer faces than this fraction of the largest one are dropped (floaters)."""
    target_faces: int | None = None
    """Decimate to at most this many faces (quadric decimation); None keeps every face."""
    fill_hidden: bool = True
    """Fill space that every input view sees behind its rendered surface (unobserved interior)."""
    hidden_margin_voxels: float = 2.0
    """How far behind a view's rendered surface a point must be to count as hidden from it."""
    depth_map_size: int = 160
    """Longer side of the depth maps rendered for :func:`hidden_from_views`."""
    chunk: int = 1 << 18


def density_grid(field: TriplaneField, occupancy: OccupancyGrid | None, resolution: int, chunk: int) -> torch.Tensor:
    """σ at the (res, res, res) lattice over [-1, 1]³ (indexed [x, y, z]); only near occupied cells is the field
    evaluated, elsewhere σ = 0."""
    device = field.planes.device
    axis = torch.linspace(-1, 1, resolution, device=device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).view(-1, 3)
    grid = torch.zeros(pts.shape[0], device=device)
    todo = occupancy.dilated(1).lookup(pts) if occupancy is not None else torch.ones_like(grid, dtype=torch.bool)
    idx = todo.nonzero().squeeze(1)
    with torch.no_grad():
        for part in idx.split(chunk):
            grid[part] = field.density(pts[part])
    return grid.view(resolution, resolution, resolution)


def gaussian_blur3d(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (X, Y, Z) volume with replicate padding (differentiable)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    v = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        v = F.conv3d(F.pad(v, pad, mode="replicate"), kernel.view(shape))
    return v[0, 0]


def components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Connected-component label per face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = faces.astype(np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, num_vertices))
    _, vertex_label = connected_components(graph, directed=False)
    return vertex_label[f[:, 0]]


def remove_small_components(mesh: Mesh, min_ratio: float) -> Mesh:
    """Drop components whose face count is below ``min_ratio`` × the largest component's; compact vertices."""
    if mesh.num_faces == 0:
        return mesh
    faces = mesh.faces.cpu().numpy()
    labels = components(faces, mesh.num_vertices)
    counts = np.bincount(labels)
    keep_faces = counts[labels] >= min_ratio * counts.max()
    return compact(mesh, torch.as_tensor(keep_faces, device=mesh.faces.device))


def compact(mesh: Mesh, keep_faces: torch.Tensor) -> Mesh:
    """Keep the selected faces and only the vertices they use (differentiable w.r.t. vertices)."""
    faces = mesh.faces[keep_faces]
    used, inverse = torch.unique(faces.view(-1), return_inverse=True)
    colors = None if mesh.vertex_colors is None else mesh.vertex_colors[used]
    return Mesh(mesh.vertices[used], inverse.view(-1, 3), colors)


def decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """Quadric decimation (fast-simplification) to at most ``target_faces`` faces. Not differentiable."""
    if mesh.num_faces <= target_faces:
        return mesh
    import fast_simplification

    v = mesh.vertices.detach().cpu().numpy().astype(np.float64)
    f = mesh.faces.cpu().numpy().astype(np.int64)
    v2, f2 = fast_simplification.simplify(v, f, target_reduction=1.0 - target_faces / len(f))
    device = mesh.vertices.device
    return Mesh(torch.as_tensor(v2, dtype=torch.float32, device=device), torch.as_tensor(f2, dtype=torch.int64, device=device))


def fill_cavities(values: torch.Tensor, level: float) -> torch.Tensor:
    """Raise every below-level region that is not connected to the grid's border to the grid maximum.

    Cameras never see inside an object, so the fitted density there is arbitrary; closed pockets of low density
    would become inner surfaces. Gradients still flow through the untouched values.
    """
    from scipy import ndimage

    empty = (values <= level).cpu().numpy()
    labels, _ = ndimage.label(empty)
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
    pockets = empty & ~np.isin(labels, border[border > 0])
    if not pockets.any():
        return values
    mask = torch.as_tensor(pockets, device=values.device)
    return torch.where(mask, values.detach().max(), values)


@torch.no_grad()
def hidden_from_views(
    field: TriplaneField,
    occupancy: OccupancyGrid | None,
    views: list[View],
    resolution: int,
    config: ExtractConfig,
    region: OccupancyGrid | None = None,
) -> torch.Tensor:
    """(res, res, res) bool: lattice points that every view sees behind its volume-rendered surface.

    A view's rendered depth marks where its rays stop; a point more than ``hidden_margin_voxels`` beyond that
    depth in every view that sees it is inside the object, whatever the (unobserved) density there says. Only
    points inside ``region`` (the visual hull) and seen by at least half of the views qualify.
    """
    device = field.planes.device
    axis = torch.linspace(-1, 1, resolution, device=device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).view(-1, 3)
    hidden = torch.ones(pts.shape[0], dtype=torch.bool, device=device)
    seen = torch.zeros(pts.shape[0], dtype=torch.int32, device=device)
    margin = config.hidden_margin_voxels * 2.0 / (resolution - 1)
    occ = occupancy if occupancy is not None else OccupancyGrid(torch.ones((8,) * 3, dtype=torch.bool, device=device))
    render = RenderConfig()
    for view in views:
        cam = view.camera
        scale = min(1.0, config.depth_map_size / max(cam.width, cam.height))
        cam = cam.scaled(max(1, round(cam.width * scale)), max(1, round(cam.height * scale)))
        origins, dirs = ray_bundle(cam, device)
        t_stop = torch.empty(cam.height * cam.width, device=device)
        for o, d, sl in zip(origins.view(-1, 3).split(16384), dirs.view(-1, 3).split(16384),
                            torch.arange(cam.height * cam.width, device=device).split(16384)):
            out = render_rays(field, o, d, occ, render, torch.zeros(3, device=device))
            t_stop[sl] = torch.where(out.opacity > 0.5, out.depth_median, torch.full_like(out.depth, -1e9))
        uv, z = project_points(cam, pts)
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        pix = row.clamp(0, cam.height - 1) * cam.width + col.clamp(0, cam.width - 1)
        if cam.orthographic:
            t_point = z
        else:
            t_point = (pts - torch.as_tensor(cam.centre, dtype=pts.dtype, device=device)).norm(dim=-1)
        hidden &= ~inside | (t_point > t_stop[pix] + margin)
        seen += inside.int()
    hidden &= seen >= max(1, len(views) // 2)
    if region is not None:
        hidden &= region.lookup(pts)
    return hidden.view(resolution, resolution, resolution)


def mesh_from_density(grid: torch.Tensor, config: ExtractConfig, hidden: torch.Tensor | None = None) -> Mesh:
    """Marching cubes on a density grid at ``config.level`` (after the optional log-density blur). Points in
    ``hidden`` (seen by no view) and enclosed cavities are filled, so unobserved interiors make no surfaces."""
    values = torch.log(grid.clamp_min(1e-6))
    if config.blur_voxels > 0:
        values = gaussian_blur3d(values, config.blur_voxels)
    if hidden is not None:
        values = torch.where(hidden, torch.maximum(values, values.detach().max()), values)
    values = fill_cavities(values, math.log(config.level))
    vertices, faces = marching_cubes(values, math.log(config.level), backend="auto")
    return Mesh(vertices, faces)


def extract(
    field: TriplaneField,
    occupancy: OccupancyGrid | None,
    config: ExtractConfig,
    hooks: Hooks | None = None,
    views: list[View] | None = None,
    hull: OccupancyGrid | None = None,
) -> Mesh:
    """Mesh of the field's surface in the canonical frame. With ``views`` (canonical), space inside ``hull`` that
    no view sees is filled (see :func:`hidden_from_views`)."""
    hooks = hooks or Hooks()
    hooks.report("extract", 0, 3, "density grid")
    grid = density_grid(field, occupancy, config.resolution, config.chunk)
    hidden = None
    if views and config.fill_hidden:
        hidden = hidden_from_views(field, occupancy, views, config.resolution, config, hull)
    hooks.report("extract", 1, 3, "marching cubes")
    mesh = mesh_from_density(grid, config, hidden)
    hooks.report("extract", 2, 3, "clean-up")
    mesh = remove_small_components(mesh.detached(), config.min_component_ratio)
    if config.target_faces:
        mesh = decimate(mesh, config.target_faces)
    hooks.report("extract", 3, 3, f"{mesh.num_faces} faces")
    return mesh
