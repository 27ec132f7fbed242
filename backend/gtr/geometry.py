"""Mesh extraction as the official release does it: density on a grid over [-1, 1]³, iso-level, marching cubes.

The implicit value is s = level − σ (inside where s < 0). The grid is padded by one node of value +1 (outside) on
every side, so surfaces that touch the box are closed; their closing vertices can lie up to 2/(N−1) outside the
box. Vertices come one per crossed grid edge, ordered by the edge's start node (x slowest) and then its axis, which
is the order diso's kernel emits them in.
"""

from __future__ import annotations

import numpy as np
import torch

from ..field import TriplaneField
from ..marching_cubes import marching_cubes


def extract_mesh(density: torch.Tensor, level: float, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Marching cubes of the σ = ``level`` surface → vertices (V, 3) in [-1, 1]³ world units, faces (F, 3) int64
    wound counter-clockwise seen from outside. Empty tensors when the level is never crossed."""
    N = density.shape[0]
    s = level - density
    padded = torch.nn.functional.pad(s, (1, 1, 1, 1, 1, 1), value=1.0)
    n = padded.shape[0] - 1
    # Inside is s < 0, i.e. -s > 0; in index units (bbox = the padded lattice) positions are node + t exactly.
    verts, faces = marching_cubes(-padded, 0.0, (0.0, 0.0, 0.0), (float(n),) * 3, backend=backend, join_inside=True)
    verts = (verts - 1) / (N - 1) * 2 - 1
    return verts, faces


@torch.no_grad()
def vertex_colors_uint8(field: TriplaneField, vertices: torch.Tensor) -> np.ndarray:
    """(V, 4) RGBA bytes: the colour MLP at the vertices, clamped, ×255, truncated; alpha 255."""
    rgb = (field.color(vertices).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    return np.concatenate([rgb, np.full((rgb.shape[0], 1), 255, np.uint8)], axis=1)
