"""The scene's evaluated surface as triangle arrays, and depth / normal maps by ray casting it through pixel centres.

Depth and normals do not come from Cycles passes: each pixel centre's ray is cast against a ``BVHTree`` of the
world-space triangles, so the depth is exactly the camera-z distance of the first hit (along the optical axis, not
along the ray) and the normal is the hit triangle's corner (shading) normals interpolated at the hit — what Cycles
shades with: custom normals, sharp edges and flat faces included. A normal is turned to face the camera when the
ray hits the back of a triangle (an open surface seen from behind, or a flipped face), as Cycles shades it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rig import View

GEOMETRY_TYPES = frozenset({"MESH", "CURVE", "SURFACE", "META", "FONT"})
"""Object types whose evaluated data converts to a mesh (``Object.to_mesh``)."""


@dataclass
class Surface:
    """World-space triangles: ``vertices`` (V, 3) float64, ``triangles`` (T, 3) vertex indices,
    ``corner_normals`` (T, 3, 3) unit shading normals at each triangle's corners."""

    vertices: np.ndarray
    triangles: np.ndarray
    corner_normals: np.ndarray

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) corners of the axis-aligned box around the vertices used by triangles."""
        used = self.vertices[np.unique(self.triangles)]
        return used.min(axis=0), used.max(axis=0)


def gather_surface(depsgraph) -> Surface:
    """The triangles of every rendered geometry instance of ``depsgraph`` (modifiers applied, instances expanded)."""
    vertices, triangles, normals = [], [], []
    offset = 0
    for instance in depsgraph.object_instances:
        obj = instance.object
        if obj.type not in GEOMETRY_TYPES or obj.original.hide_render:
            continue
        matrix = np.array(instance.matrix_world, dtype=np.float64)
        mesh = obj.to_mesh()
        try:
            if mesh is None:
                continue
            mesh.calc_loop_triangles()
            count = len(mesh.loop_triangles)
            if count == 0:
                continue
            corners = np.empty(count * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("vertices", corners)
            loops = np.empty(count * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("loops", loops)
            positions = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", positions)
            corner_normals = np.empty(len(mesh.loops) * 3, dtype=np.float64)
            mesh.corner_normals.foreach_get("vector", corner_normals)
        finally:
            obj.to_mesh_clear()
        positions = positions.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
        linear = matrix[:3, :3]
        normal_matrix = np.linalg.inv(linear) if abs(np.linalg.det(linear)) > 1e-30 else np.eye(3)
        world_normals = corner_normals.reshape(-1, 3)[loops] @ normal_matrix  # (M⁻¹)ᵀ n, row vectors
        vertices.append(positions)
        triangles.append(corners.reshape(-1, 3) + offset)
        normals.append(world_normals.reshape(-1, 3, 3))
        offset += len(positions)
    if not triangles:
        return Surface(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3, 3)))
    normals = np.concatenate(normals)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-30)
    return Surface(np.concatenate(vertices), np.concatenate(triangles), normals)


class SurfaceCaster:
    """Casts pixel-centre rays of a view against one :class:`Surface` (the BVH is built once)."""

    def __init__(self, surface: Surface):
        from mathutils.bvhtree import BVHTree

        self.surface = surface
        self.tree = BVHTree.FromPolygons(surface.vertices.tolist(), surface.triangles.tolist(), all_triangles=True)
        corners = surface.vertices[surface.triangles]  # (T, 3, 3)
        geometric = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        # the side the shading normals are on (a mirrored instance flips the winding, not the normals)
        agree = np.einsum("ti,ti->t", geometric, surface.corner_normals.sum(axis=1)) >= 0
        self.face_normals = np.where(agree[:, None], geometric, -geometric)

    def depth_and_normals(self, view: View, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera-z depth (size, size) in world units (0 = background) and unit world normals (size, size, 3)
        (0 = background) at the centres of the pixels of a square ``size`` image, top row first."""
        matrix = np.array(view.matrix, dtype=np.float64)
        rotation, origin = matrix[:3, :3], matrix[:3, 3]
        focal = size / 2.0 / np.tan(view.fov / 2.0)
        centres = (np.arange(size) + 0.5 - size / 2.0) / focal
        x, y = np.meshgrid(centres, -centres)  # image rows go down, camera y goes up
        directions = np.stack([x, y, -np.ones_like(x)], axis=-1) @ rotation.T  # camera z = −1: t is the depth
        flat = directions.reshape(-1, 3)

        cast = self.tree.ray_cast
        origin_tuple = tuple(origin)
        hit_pixels, hit_points, hit_faces = [], [], []
        for pixel, direction in enumerate(flat.tolist()):
            location, _, face, _ = cast(origin_tuple, direction)
            if location is not None:
                hit_pixels.append(pixel)
                hit_points.append(location[:])
                hit_faces.append(face)

        depth = np.zeros(size * size, dtype=np.float64)
        normals = np.zeros((size * size, 3), dtype=np.float64)
        if hit_pixels:
            pixels = np.asarray(hit_pixels)
            points = np.asarray(hit_points, dtype=np.float64)
            faces = np.asarray(hit_faces)
            forward = -rotation[:, 2]
            depth[pixels] = (points - origin) @ forward
            normals[pixels] = self._interpolated_normals(points, faces, flat[pixels])
        return depth.reshape(size, size), normals.reshape(size, size, 3)

    def _interpolated_normals(self, points: np.ndarray, faces: np.ndarray, directions: np.ndarray) -> np.ndarray:
        corners = self.surface.vertices[self.surface.triangles[faces]]  # (N, 3, 3)
        weights = _barycentric(points, corners)
        normals = np.einsum("nk,nki->ni", weights, self.surface.corner_normals[faces])
        backfacing = np.einsum("ni,ni->n", self.face_normals[faces], directions) > 0
        normals[backfacing] *= -1.0
        length = np.linalg.norm(normals, axis=-1, keepdims=True)
        fallback = self.face_normals[faces] * np.where(backfacing, -1.0, 1.0)[:, None]
        normals = np.where(length > 1e-12, normals, fallback)  # opposite corner normals cancelling: rare
        return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-30)


def _barycentric(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric weights (N, 3) of ``points`` (N, 3) in the triangles ``corners`` (N, 3, 3), clipped to ≥ 0."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00 = np.einsum("ni,ni->n", v0, v0)
    d01 = np.einsum("ni,ni->n", v0, v1)
    d11 = np.einsum("ni,ni->n", v1, v1)
    d20 = np.einsum("ni,ni->n", v2, v0)
    d21 = np.einsum("ni,ni->n", v2, v1)
    denominator = d00 * d11 - d01 * d01
    safe = np.where(np.abs(denominator) > 1e-30, denominator, 1.0)
    v = np.where(np.abs(denominator) > 1e-30, (d11 * d20 - d01 * d21) / safe, 1 / 3)
    w = np.where(np.abs(denominator) > 1e-30, (d00 * d21 - d01 * d20) / safe, 1 / 3)
    weights = np.clip(np.stack([1.0 - v - w, v, w], axis=-1), 0.0, None)
    return weights / np.maximum(weights.sum(axis=-1, keepdims=True), 1e-30)
