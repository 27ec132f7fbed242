"""Early meshes to show while a job runs: the visual hull, then the extracted surface before texture refinement.

Stages call :func:`send_preview` with a function that builds the mesh in the canonical frame; it is built (and
mapped to the job's world frame) only when ``hooks.wants_previews``, so runs without a listener pay nothing.
Building is cheap by design: the hull is meshed on a grid of at most :data:`HULL_PREVIEW_CELLS` cells per side,
and the surface's colours are one colour-field query per vertex.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .bake import ColorFn, evaluate_colors
from .frame import CanonicalFrame
from .marching_cubes import marching_cubes
from .mesh import Mesh
from .progress import Hooks
from .volume import OccupancyGrid

HULL_PREVIEW_CELLS = 64
"""Largest grid side the hull preview is meshed on; a finer hull is box-averaged down to it first."""
COLOUR_CHUNK = 65536
"""Vertices per colour-field call when colouring a preview."""


def hull_mesh(hull: OccupancyGrid) -> Mesh:
    """The surface of an occupancy grid over [−1, 1]³ (no colours), in the same frame as the grid.

    The grid is padded with one empty cell per side (so the surface closes at the box), box-averaged by
    ``f = ceil(D / HULL_PREVIEW_CELLS)`` and meshed at occupancy 0.5 between the averaged cells' centres.
    """
    D = hull.resolution
    f = max(1, math.ceil(D / HULL_PREVIEW_CELLS))
    values = F.pad(hull.occupied.float(), (1, 1) * 3)[None, None]
    if f > 1:
        values = F.avg_pool3d(values, f, stride=f)
    values = values[0, 0]
    # Padded cell j has its centre at −1 + (2j − 1) / D; averaged cell m spans padded cells m·f … m·f + f − 1.
    first = -1.0 + (f - 2) / D
    last = first + 2.0 * f * (values.shape[0] - 1) / D
    vertices, faces = marching_cubes(values, 0.5, (first,) * 3, (last,) * 3)
    return Mesh(vertices, faces)


def coloured(mesh: Mesh, color_fn: ColorFn) -> Mesh:
    """``mesh`` with vertex colours from the colour field at its vertices (no gradients)."""
    colors = evaluate_colors(color_fn, mesh.vertices.detach(), COLOUR_CHUNK)
    return Mesh(mesh.vertices.detach(), mesh.faces, vertex_colors=colors)


def send_preview(hooks: Hooks, build: Callable[[], Mesh], frame: CanonicalFrame, label: str) -> None:
    """Build a canonical-frame mesh with ``build()``, map it to the world and hand it to ``hooks.preview`` —
    only when someone listens, and checking for cancel before and after building."""
    if not hooks.wants_previews:
        return
    hooks.check_cancel()
    with torch.no_grad():
        mesh = build()
    if mesh.num_faces == 0:
        return
    hooks.check_cancel()
    hooks.preview(mesh.transformed(frame.world_from_canonical), label)
