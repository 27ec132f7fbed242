"""The mesh type stages exchange."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


def corners(values: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(M, 3, ...) the per-vertex ``values`` (N, ...) at each face's corners: ``values[faces]``, gathered with
    ``index_select``, which is several times faster than advanced indexing on the CPU (forward and backward)."""
    return values.index_select(0, faces.reshape(-1)).reshape(faces.shape[0], 3, *values.shape[1:])


@dataclass
class Mesh:
    """Triangle mesh. ``vertices`` (N, 3) float32; ``faces`` (M, 3) int64, counter-clockwise seen from outside.

    Optional appearance: ``vertex_colors`` (N, 3) float32 sRGB in [0, 1]; or ``uvs`` (M, 3, 2) float32 per-corner
    texture coordinates (origin bottom-left, as in OBJ/glTF-after-flip conventions: v up) with ``texture``
    (T, T, 3) float32 sRGB in [0, 1], row 0 = top of the image.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def face_normals(self) -> torch.Tensor:
        """(M, 3) unit normals (outward for a correctly wound mesh)."""
        v = corners(self.vertices, self.faces)
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def vertex_normals(self) -> torch.Tensor:
        """(N, 3) area-weighted unit vertex normals."""
        v = corners(self.vertices, self.faces)
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        out = torch.zeros_like(self.vertices)
        for k in range(3):
            out.index_add_(0, self.faces[:, k], n)
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def to(self, device) -> Mesh:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Mesh(move(self.vertices), move(self.faces), move(self.vertex_colors), move(self.uvs), move(self.texture))

    def detached(self) -> Mesh:
        return replace(self, vertices=self.vertices.detach())

    def transformed(self, matrix: np.ndarray) -> Mesh:
        """Apply a 4×4 similarity transform to the vertices (winding kept for positive determinants)."""
        m = torch.as_tensor(matrix, dtype=torch.float64, device=self.vertices.device)
        v = (self.vertices.double() @ m[:3, :3].T + m[:3, 3]).to(self.vertices.dtype)
        faces = self.faces if torch.det(m[:3, :3]) > 0 else self.faces[:, [0, 2, 1]]
        return replace(self, vertices=v, faces=faces)
