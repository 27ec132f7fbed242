"""Geometry refinement: move an extracted mesh's vertices so its renders match the views (masks, colours).

Each iteration renders the mesh differentiably (:func:`backend.diff_render.render`) into a few random views and
takes one Adam step on per-vertex offsets. Losses: mean squared error between the antialiased coverage and the
view's mask; where the mesh has vertex colours and the view a mask, mean squared error between the premultiplied
colour render and the view's colours times its mask. Regularisers keep the surface a surface: the uniform
Laplacian of the offsets (smooth displacements, the extracted detail kept) and normal consistency between
neighbouring faces. Optionally vertices move along their initial normals only. Each step is capped at a fraction of
the mean edge length, so a face cannot flip in one step; faces that flipped relative to the start are counted.
Optionally (``inside_masks``) vertices that project beyond a mask's edge are moved back after each step, judged at
the view's own size: renders compared at ``max_size`` cannot see a band a pixel or two wide along the silhouette.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .cameras import Camera
from .diff_render import EdgeTopology, edge_topology, render
from .hull import project_points
from .mesh import Mesh
from .progress import Hooks
from .views import View, downscale


@dataclass(frozen=True)
class GeometryConfig:
    """Per-instance geometry refinement (:func:`refine_geometry`)."""

    iterations: int = 200
    """Optimisation steps (0 returns the mesh unchanged)."""
    views_per_iteration: int = 4
    """Views rendered in each step (a random subset; all views when there are fewer)."""
    lr: float = 0.0002
    """Adam learning rate of the vertex offsets, as a fraction of the mesh's bounding-box diagonal."""
    max_size: int = 256
    """Longer side of the renders (views are compared at this size; masks and colours area-averaged to it)."""
    mask_weight: float = 1.0
    """Weight of the coverage loss (mean squared error against the view's mask)."""
    color_weight: float = 0.5
    """Weight of the colour loss (used when the mesh has vertex colours and the view a mask)."""
    laplacian_weight: float = 10.0
    """Weight of the uniform Laplacian of the offsets (squared, per vertex, relative to the diagonal squared)."""
    normal_weight: float = 0.1
    """Weight of normal consistency (1 − cos between the normals of faces sharing an edge, mean)."""
    normal_only: bool = False
    """Move each vertex along its initial normal only (one scalar per vertex)."""
    inside_masks: float | None = None
    """When set: after each step, move the vertices that lie more than this many pixels beyond the edge of a
    chosen view's mask back to that distance, and at the end do so for every view (a point of the object lies
    inside its silhouette in every photo, seen or hidden). Pixels of the view at its own size, finer than
    ``max_size``. Where poses and masks disagree by a pixel or so (real photos), 0 shrinks the mesh below the
    masks of views not used (docs/BENCHMARKS.md)."""
    max_step: float = 0.25
    """Largest move of a vertex in one step, as a fraction of the mean edge length."""
    cull_backfaces: bool = True
    """Rasterise front faces only (right for closed, consistently wound meshes, which extraction gives)."""
    seed: int = 0
    """Seed of the view sampling."""


@dataclass
class GeometryStats:
    """What :func:`refine_geometry` did. Losses are the data terms (coverage + colour), mean over the views of
    the first / last step."""

    iterations: int
    seconds: float
    initial_loss: float
    final_loss: float
    max_displacement: float
    """Largest distance a vertex moved, in world units."""
    flipped_faces: int
    """Faces whose normal points against its starting direction at the end."""


def refine_geometry(
    mesh: Mesh, views: list[View], config: GeometryConfig, hooks: Hooks | None = None
) -> tuple[Mesh, GeometryStats]:
    """Refine ``mesh``'s vertex positions against ``views`` (their cameras in the mesh's frame); faces, colours
    and UVs are kept. Reports stage ``geometry`` every 10 steps (a cancel check every step). Views without a mask
    contribute only through the colour loss (none when the mesh has no vertex colours)."""
    hooks = hooks or Hooks()
    start = time.perf_counter()
    base = mesh.vertices.detach().to(torch.float32)
    device = base.device
    faces = mesh.faces.to(device=device, dtype=torch.int64)
    if config.iterations <= 0 or not views or faces.shape[0] == 0:
        return mesh, GeometryStats(0, 0.0, float("nan"), float("nan"), 0.0, 0)
    topology = edge_topology(faces)
    diag = float((base.max(dim=0).values - base.min(dim=0).values).norm())
    edge_len = float((base[topology.edges[:, 0]] - base[topology.edges[:, 1]]).norm(dim=1).mean())
    cap = config.max_step * edge_len  # the longest move of a vertex in one step
    colours = mesh.vertex_colors.to(device, torch.float32) if mesh.vertex_colors is not None else None
    targets = [_targets(view, config.max_size, device) for view in views]
    silhouettes = [_Silhouette.of(view, device) if config.inside_masks is not None else None for view in views]
    usable = [
        n for n, (_, mask, rgb) in enumerate(targets) if mask is not None or (colours is not None and rgb is not None)
    ]
    if not usable:
        return mesh, GeometryStats(0, time.perf_counter() - start, float("nan"), float("nan"), 0.0, 0)
    neighbours, degree = _adjacency(topology, base.shape[0])
    normals0 = Mesh(base, faces).vertex_normals() if config.normal_only else None
    start_face_normals = Mesh(base, faces).face_normals()

    param = torch.zeros((base.shape[0], 1 if config.normal_only else 3), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([param], lr=config.lr * diag)
    generator = torch.Generator().manual_seed(config.seed)
    first_loss = last_loss = float("nan")
    it = 0
    for it in range(1, config.iterations + 1):
        pick = torch.randperm(len(usable), generator=generator)[: config.views_per_iteration].tolist()
        chosen = [usable[n] for n in pick]
        offsets = param * normals0 if normals0 is not None else param
        vertices = base + offsets
        out = render(
            vertices, faces, [targets[n][0] for n in chosen], colours, topology=topology,
            cull_backfaces=config.cull_backfaces, backend="torch" if device.type == "cpu" else "auto",
        )  # fmt: skip
        data = vertices.new_zeros(())
        for k, n in enumerate(chosen):
            _, mask, rgb = targets[n]
            if mask is not None:
                data = data + config.mask_weight * (out.mask[k] - mask).square().mean()
                if colours is not None and rgb is not None:
                    data = data + config.color_weight * (out.attributes[k] - rgb * mask[..., None]).square().mean()
            elif colours is not None and rgb is not None:  # no mask: compare colours where the mesh is
                diff = out.attributes[k] - rgb * out.mask[k][..., None]
                data = data + config.color_weight * diff.square().mean()
        data = data / len(chosen)
        lap = _laplacian(offsets, neighbours, degree).square().sum(dim=1).mean() / diag**2
        normal = _normal_consistency(vertices, faces, topology)
        loss = data + config.laplacian_weight * lap + config.normal_weight * normal
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        before = param.detach().clone()
        optimiser.step()
        with torch.no_grad():
            step = param - before
            size = step.norm(dim=1, keepdim=True)
            param.copy_(before + step * (cap / size.clamp_min(cap)))
        _move_inside(param, base, normals0, [silhouettes[n] for n in chosen], config.inside_masks, cap)
        last_loss = float(data.detach())
        if it == 1:
            first_loss = last_loss
        if it % 10 == 0 or it == config.iterations:
            hooks.report("geometry", it, config.iterations, f"loss {last_loss:.5f}")
        else:
            hooks.check_cancel()
    _move_inside(param, base, normals0, silhouettes, config.inside_masks, cap)  # all views
    with torch.no_grad():
        offsets = param * normals0 if normals0 is not None else param
        vertices = base + offsets
        moved = float(offsets.norm(dim=1).max())
        end_normals = Mesh(vertices, faces).face_normals()
        flipped = int(((end_normals * start_face_normals).sum(dim=1) < 0).sum())
    refined = replace(mesh, vertices=vertices.to(mesh.vertices.dtype))
    return refined, GeometryStats(it, time.perf_counter() - start, first_loss, last_loss, moved, flipped)


def _targets(view: View, max_size: int, device):
    """(camera at render size, mask (h, w) or None, rgb (h, w, 3) or None) on ``device``."""
    small = downscale(replace(view, depth=None), max_size)

    def tensor(a) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.float32, device=device)

    return small.camera, tensor(small.mask), tensor(small.rgb)


@dataclass(frozen=True)
class _Silhouette:
    """A view's mask as a map of how far each pixel lies outside it, and the view's camera."""

    distance: torch.Tensor
    """(1, 1, H, W) pixels from each pixel's centre to the nearest pixel centre inside the mask (0 inside)."""
    camera: Camera

    @staticmethod
    def of(view: View, device) -> _Silhouette | None:
        """The view's map at its own size, or None when it has no mask (or an empty one)."""
        if view.mask is None or not (inside := np.asarray(view.mask) >= 0.5).any():
            return None
        distance = torch.as_tensor(ndimage.distance_transform_edt(~inside), dtype=torch.float32, device=device)
        return _Silhouette(distance[None, None], view.camera)

    def outside(self, vertices: torch.Tensor, beyond: float) -> torch.Tensor:
        """(N,) pixels each vertex projects more than ``beyond`` pixels past the mask's edge (0 for the others and
        behind the camera), differentiable in the vertices (bilinear in the distance map, which is 0.5 on the
        edge)."""
        uv, z = project_points(self.camera, vertices)
        front = torch.ones_like(z, dtype=torch.bool) if self.camera.orthographic else z > 1e-6
        height, width = self.distance.shape[-2:]
        grid = torch.stack([uv[:, 0] * (2 / width) - 1, uv[:, 1] * (2 / height) - 1], dim=-1)[None, None]
        distance = F.grid_sample(self.distance, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (distance[0, 0, 0] - 0.5 - beyond).clamp_min(0) * front

    def back_inside(self, vertices: torch.Tensor, beyond: float, cap: float) -> torch.Tensor:
        """(N, 3) moves that bring the vertices back to ``beyond`` pixels past the mask's edge: one Gauss-Newton
        step on each vertex's distance (exact where the distance map is linear across the vertex's move), at most
        ``cap`` long; zero for the vertices inside."""
        with torch.enable_grad():
            points = vertices.detach().requires_grad_(True)
            excess = self.outside(points, beyond)
            (gradient,) = torch.autograd.grad(excess.sum(), points)
        move = -excess.detach()[:, None] * gradient / gradient.square().sum(dim=1, keepdim=True).clamp_min(1e-12)
        length = move.norm(dim=1, keepdim=True)
        return move * (cap / length.clamp_min(cap))


def _move_inside(param: torch.Tensor, base: torch.Tensor, normals: torch.Tensor | None,
                 silhouettes: list[_Silhouette | None], beyond: float, cap: float) -> None:  # fmt: skip
    """Move the vertices (``base`` + offsets ``param``, along ``normals`` when given) back inside each silhouette
    in turn (:meth:`_Silhouette.back_inside`), in place."""
    for silhouette in silhouettes:
        if silhouette is None:
            continue
        with torch.no_grad():
            move = silhouette.back_inside(base + (param * normals if normals is not None else param), beyond, cap)
            param += (move * normals).sum(dim=1, keepdim=True) if normals is not None else move


def _adjacency(topology: EdgeTopology, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of every edge (2E, 2) and each vertex's degree (N,)."""
    e = topology.edges
    both = torch.cat([e, e.flip(1)])
    degree = torch.zeros(count, device=e.device).index_add(0, both[:, 0], torch.ones(both.shape[0], device=e.device))
    return both, degree


def _laplacian(x: torch.Tensor, neighbours: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """Uniform Laplacian: each row minus the mean of its neighbours' rows."""
    total = torch.zeros_like(x).index_add(0, neighbours[:, 0], x.index_select(0, neighbours[:, 1]))
    return x - total / degree.clamp_min(1)[:, None]


def _normal_consistency(vertices: torch.Tensor, faces: torch.Tensor, topology: EdgeTopology) -> torch.Tensor:
    """Mean (1 − cos) between the normals of the two faces of every interior edge."""
    n = Mesh(vertices, faces).face_normals()
    inner = topology.faces[:, 1] >= 0
    f0, f1 = topology.faces[inner, 0], topology.faces[inner, 1]
    return (1.0 - (n.index_select(0, f0) * n.index_select(0, f1)).sum(dim=-1)).mean()
