"""Differentiable, crack-free marching cubes in pure torch (CPU and CUDA).

Grid convention: ``values`` has shape (X, Y, Z) and ``values[i, j, k]`` is sampled at
``bbox_min + (i, j, k) / (X - 1, Y - 1, Z - 1) * (bbox_max - bbox_min)``. The inside region is
``values > level`` (density convention); a value exactly equal to ``level`` counts as outside.

Output faces are wound counter-clockwise seen from outside: ``cross(b - a, c - a)`` points toward decreasing
values. There is exactly one vertex per crossed lattice edge, shared by every cell around that edge, and its
position is the linear interpolation ``t = (level - v0) / (v1 - v0)`` along the edge, so gradients flow from the
vertices to the two grid values at the edge's ends.

The case table is not a transcribed classic table: it is derived at import time from one rule. For every corner
sign pattern, each of the six cube faces gets its crossing segments; a face with two diagonally opposite inside
corners (the ambiguous face) always separates the inside corners. The rule only looks at the face's own four
corners, so the two cells sharing a face always agree on its segments and the surface has no cracks. Segments are
oriented from the sign pattern, chained into closed loops and each loop is triangulated without ever adding a
diagonal between two vertices on the same cube face (such a diagonal could also be chosen by the neighbouring cell
and would then be shared by four triangles). The result is a closed, consistently oriented 2-manifold for any
field that is outside on the grid boundary.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MarchingCubesConfig", "diso_available", "marching_cubes"]

# --------------------------------------------------------------------------------------------------------------
# Cube topology. Corner c sits at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1) in (x, y, z) = (i, j, k).
# Edge e joins corners (c0, c0 | 1 << axis); edges are numbered axis-major: x edges 0-3, y edges 4-7, z edges 8-11.
# --------------------------------------------------------------------------------------------------------------

_CORNERS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=np.int64)
_EDGES = [(c, c | (1 << a), a) for a in range(3) for c in range(8) if not (c >> a) & 1]
_EDGE_START = np.array([_CORNERS[c0] for c0, _, _ in _EDGES], dtype=np.int64)  # (12, 3) lattice offset of start
_EDGE_AXIS = np.array([a for _, _, a in _EDGES], dtype=np.int64)  # (12,)
_EDGE_MID = np.array([(_CORNERS[c0] + _CORNERS[c1]) / 2.0 for c0, c1, _ in _EDGES])  # (12, 3)


def _edge_id(c0: int, c1: int) -> int:
    lo, hi = min(c0, c1), max(c0, c1)
    for e, (a, b, _) in enumerate(_EDGES):
        if (a, b) == (lo, hi):
            return e
    raise ValueError((c0, c1))


def _cube_faces() -> list[tuple[np.ndarray, list[int]]]:
    """Six faces as (outward normal, 4 corners in cyclic order)."""
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for side in (0, 1):
            ring = []
            for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                c = (side << axis) | (du << u) | (dv << v)
                ring.append(c)
            normal = np.zeros(3)
            normal[axis] = 1.0 if side else -1.0
            faces.append((normal, ring))
    return faces


_FACES = _cube_faces()
# Cube faces (indices into _FACES) each edge lies on; two edges "share a face" when these sets intersect.
_EDGE_FACES = [{f for f, (_, ring) in enumerate(_FACES) if c0 in ring and c1 in ring} for c0, c1, _ in _EDGES]


def _face_segments(case: int, join_inside: bool = False) -> list[tuple[int, int]]:
    """Oriented segments (edge_from, edge_to) of one corner configuration, over all six cube faces.

    On an ambiguous face the inside corners are cut off one by one, or with ``join_inside`` the outside corners are
    (the inside then connects across the face, as diso's tables do).

    Orientation: walking from ``edge_from`` to ``edge_to`` on a face seen from outside the cube, the inside corners
    lie on the right. Chained, the loops then run so that the right-hand normal points out of the inside region.
    """
    inside = [(case >> c) & 1 for c in range(8)]
    segments = []
    for normal, ring in _FACES:
        ring_edges = [_edge_id(ring[q], ring[(q + 1) % 4]) for q in range(4)]
        crossed = [q for q in range(4) if inside[ring[q]] != inside[ring[(q + 1) % 4]]]
        if not crossed:
            continue
        if len(crossed) == 2:
            pairs = [(ring_edges[crossed[0]], ring_edges[crossed[1]], [ring[q] for q in range(4) if inside[ring[q]]])]
        else:  # ambiguous face: cut off each corner of one kind on its own (fixed rule, identical in both cells)
            cut = 0 if join_inside else 1
            pairs = []
            for q in range(4):
                if inside[ring[q]] == cut:
                    pairs.append((ring_edges[(q - 1) % 4], ring_edges[q], [ring[q]]))
        for ea, eb, corners in pairs:
            d = _EDGE_MID[eb] - _EDGE_MID[ea]
            centre = (_EDGE_MID[ea] + _EDGE_MID[eb]) / 2.0
            side = float(np.dot(np.cross(normal, d), _CORNERS[corners[0]] - centre))
            if not inside[corners[0]]:
                side = -side
            assert abs(side) > 1e-9
            segments.append((ea, eb) if side < 0 else (eb, ea))
    return segments


def _loops(segments: list[tuple[int, int]]) -> list[list[int]]:
    nxt: dict[int, int] = {}
    for a, b in segments:
        assert a not in nxt, "edge vertex with two outgoing segments"
        nxt[a] = b
    assert sorted(nxt) == sorted(nxt.values()), "segments do not form closed loops"
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, e = [], start
        while e not in seen:
            seen.add(e)
            loop.append(e)
            e = nxt[e]
        loops.append(loop)
    return loops


def _triangulate(loop: list[int]) -> list[tuple[int, int, int]]:
    """Minimum total diagonal length triangulation of a loop of cell edges, banning same-face diagonals."""
    n = len(loop)
    if n == 3:
        return [tuple(loop)]
    pts = _EDGE_MID[loop]

    def diag_cost(i: int, j: int) -> float:
        if (j - i) % n in (1, n - 1):
            return 0.0  # polygon side, not a diagonal
        if _EDGE_FACES[loop[i]] & _EDGE_FACES[loop[j]]:
            return float("inf")
        return float(np.linalg.norm(pts[i] - pts[j]))

    cost = [[0.0] * n for _ in range(n)]
    split = [[-1] * n for _ in range(n)]
    for gap in range(2, n):
        for i in range(n - gap):
            j = i + gap
            best, arg = float("inf"), -1
            for k in range(i + 1, j):
                c = cost[i][k] + cost[k][j] + diag_cost(i, k) + diag_cost(k, j)
                if c < best - 1e-12:
                    best, arg = c, k
            cost[i][j], split[i][j] = best, arg
    if not np.isfinite(cost[0][n - 1]):
        raise RuntimeError(f"no admissible triangulation for loop {loop}")

    tris: list[tuple[int, int, int]] = []

    def emit(i: int, j: int) -> None:
        if j - i < 2:
            return
        k = split[i][j]
        tris.append((loop[i], loop[k], loop[j]))
        emit(i, k)
        emit(k, j)

    emit(0, n - 1)
    return tris


@functools.lru_cache(maxsize=2)
def _case_table(join_inside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(256, T_max, 3) int64 cell-edge triangles padded with -1, and (256,) triangle counts."""
    per_case = []
    for case in range(256):
        tris: list[tuple[int, int, int]] = []
        for loop in _loops(_face_segments(case, join_inside)):
            tris.extend(_triangulate(loop))
        per_case.append(tris)
    t_max = max(len(t) for t in per_case)
    table = np.full((256, t_max, 3), -1, dtype=np.int64)
    counts = np.zeros(256, dtype=np.int64)
    for case, tris in enumerate(per_case):
        counts[case] = len(tris)
        if tris:
            table[case, : len(tris)] = np.array(tris, dtype=np.int64)
    return table, counts


_DEVICE_TABLES: dict[str, tuple[torch.Tensor, ...]] = {}


def _tables_on(
    device: torch.device, join_inside: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    key = f"{device}/{join_inside}"
    if key not in _DEVICE_TABLES:
        table, counts = _case_table(join_inside)
        _DEVICE_TABLES[key] = (
            torch.from_numpy(table).to(device),
            torch.from_numpy(counts).to(device),
            torch.from_numpy(_EDGE_START.copy()).to(device),
            torch.from_numpy(_EDGE_AXIS.copy()).to(device),
        )
    return _DEVICE_TABLES[key]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Torch extraction.
# --------------------------------------------------------------------------------------------------------------


def _empty(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():  # keep an (empty) autograd connection when values needs grad
        v = values.new_zeros((0, 3)) + values.sum() * 0
    return v, torch.zeros((0, 3), dtype=torch.int64, device=values.device)


def _unique_inverse(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ids and the inverse map (same result as torch.unique, markedly faster on CPU)."""
    ordered, perm = torch.sort(ids)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    rank = torch.cumsum(new, 0) - 1
    inverse = torch.empty_like(rank)
    inverse[perm] = rank
    return ordered[new], inverse


def _torch_marching_cubes(
    values: torch.Tensor, level: float, bmin: torch.Tensor, bmax: torch.Tensor, join_inside: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    device = values.device
    X, Y, Z = values.shape
    if min(X, Y, Z) < 2:
        return _empty(values)
    table, counts, edge_start, edge_axis = _tables_on(device, join_inside)

    # Case index per cell, built in uint8 so a 256^3 grid costs ~16 MB per temporary.
    with torch.no_grad():
        # Corner c = dx + 2 dy + 4 dz sets bit c: pair up neighbours along z (bits +4), then y (+2), then x (+1).
        inside = (values > level).to(torch.uint8)
        case = inside[:, :, :-1] | (inside[:, :, 1:] << 4)
        del inside
        case = case[:, :-1] | (case[:, 1:] << 2)
        case = case[:-1] | (case[1:] << 1)
        case = case.reshape(-1)
        active = torch.nonzero((case != 0) & (case != 255)).squeeze(1)
        if active.numel() == 0:
            return _empty(values)
        cases = case[active].long()
        del case

        # Lattice index of each active cell's origin corner, in the flattened (X, Y, Z) grid.
        ck = active % (Z - 1)
        cj = (active // (Z - 1)) % (Y - 1)
        ci = active // ((Y - 1) * (Z - 1))
        base = (ci * Y + cj) * Z + ck

        # One row per emitted triangle: (cell, slot within the cell's table row).
        n_tri = counts[cases]
        cell_of_tri = torch.repeat_interleave(torch.arange(cases.numel(), device=device), n_tri)
        first = torch.cumsum(n_tri, 0) - n_tri
        slot = torch.arange(cell_of_tri.numel(), device=device) - first[cell_of_tri]
        local = table[cases[cell_of_tri], slot]  # (T, 3) cell-local edge ids

        # Global lattice-edge id: 3 * (flat index of the edge's start point) + axis.
        strides = torch.tensor([Y * Z, Z, 1], dtype=torch.int64, device=device)
        edge_off = (edge_start * strides).sum(1)  # (12,)
        gid = (base[cell_of_tri, None] + edge_off[local]) * 3 + edge_axis[local]
        del local, slot, first, cell_of_tri, base  # keep the peak low on large outputs
        uniq, inverse = _unique_inverse(gid.reshape(-1))
        del gid
        faces = inverse.reshape(-1, 3)

        axis = uniq % 3
        p0 = uniq // 3
        p1 = p0 + strides[axis]
        coords = torch.stack([p0 // (Y * Z), (p0 // Z) % Y, p0 % Z], dim=1)

    flat = values.reshape(-1)
    v0, v1 = flat[p0], flat[p1]
    den = v1 - v0
    zero = den == 0  # cannot happen on a truly crossed edge, but never divide by zero (nor produce NaN grads)
    t = torch.where(zero, torch.full_like(den, 0.5), (level - v0) / torch.where(zero, torch.ones_like(den), den))
    onehot = torch.nn.functional.one_hot(axis, 3).to(values.dtype)
    lattice = coords.to(values.dtype) + onehot * t[:, None]
    spacing = (bmax - bmin) / torch.tensor([X - 1, Y - 1, Z - 1], dtype=values.dtype, device=device)
    vertices = bmin + lattice * spacing
    return vertices, faces


# --------------------------------------------------------------------------------------------------------------
# Optional diso backend (CUDA only, non-commercial licence; never required).
# --------------------------------------------------------------------------------------------------------------


def _import_diso():
    try:
        import diso  # type: ignore[import-not-found]
    except (ImportError, OSError, RuntimeError):  # a broken CUDA extension can fail with more than ImportError
        return None
    return diso


def diso_available(device) -> bool:
    """True when ``diso`` imports and ``device`` is a CUDA device (diso has no CPU kernels)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    return _import_diso() is not None


@functools.cache
def _diso_extractor(dtype: torch.dtype, device: str):
    diso = _import_diso()
    return diso.DiffMC(dtype=dtype).to(device)


def _diso_raw(values: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """diso on lattice coordinates (vertices in index units). diso's inside is ``sdf < iso``, hence the negation."""
    dtype = values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32
    mc = _diso_extractor(dtype, str(values.device))
    verts, faces = mc(-values.to(dtype).contiguous(), None, isovalue=-float(level), normalize=False)
    return verts.to(values.dtype), faces.to(torch.int64)


@functools.cache
def _diso_calibration(device: str) -> bool | None:
    """Check diso's axis order and winding against the torch path on a small off-centre sphere.

    Returns whether diso's faces must be flipped to match our winding, or None when its output does not line up
    with ours (then the torch path is used instead).
    """
    n = 14
    ax = torch.arange(n, dtype=torch.float32, device=device)
    gi, gj, gk = torch.meshgrid(ax, ax, ax, indexing="ij")
    centre = (5.2, 6.4, 7.3)
    vals = 3.5 - torch.sqrt((gi - centre[0]) ** 2 + (gj - centre[1]) ** 2 + (gk - centre[2]) ** 2)
    try:
        verts, faces = _diso_raw(vals, 0.0)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return None
    if verts.shape[0] == 0 or faces.shape[0] == 0:
        return None
    mean = verts.mean(0).cpu()
    if not torch.allclose(mean, torch.tensor(centre), atol=0.3):
        return None
    tri = verts[faces].double()
    volume = float(torch.einsum("ij,ij->i", tri[:, 0], torch.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() / 6.0)
    return volume < 0


def _diso_marching_cubes(values, level, bmin, bmax):
    flip = _diso_calibration(str(values.device))
    if flip is None:
        warnings.warn("diso output failed the self-check; using the torch marching cubes", stacklevel=3)
        return None
    verts, faces = _diso_raw(values, level)
    if faces.shape[0] == 0:
        return _empty(values)
    if flip:
        faces = faces[:, [0, 2, 1]]
    dims = torch.tensor(values.shape, dtype=values.dtype, device=values.device)
    return bmin + verts * (bmax - bmin) / (dims - 1), faces.contiguous()


# --------------------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarchingCubesConfig:
    """Bundled arguments for :func:`marching_cubes` (all optional)."""

    level: float = 0.0
    """Iso-level of the surface."""
    bbox_min: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    """World position of the grid's first corner (value [0, 0, 0])."""
    bbox_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """World position of the grid's last corner (value [X-1, Y-1, Z-1])."""
    backend: str = "torch"
    """``"torch"`` (the project's, differentiable) or ``"diso"`` when installed."""

    def extract(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return marching_cubes(values, self.level, self.bbox_min, self.bbox_max, backend=self.backend)


def marching_cubes(
    values: torch.Tensor,
    level: float = 0.0,
    bbox_min: Sequence[float] | torch.Tensor = (-1.0, -1.0, -1.0),
    bbox_max: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0),
    backend: str = "torch",
    join_inside: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract the ``values == level`` iso-surface of a regular grid as a triangle mesh.

    ``values``: (X, Y, Z) tensor; ``values[i, j, k]`` lies at ``bbox_min + (i, j, k) / (X-1, Y-1, Z-1) *
    (bbox_max - bbox_min)``. Inside is ``values > level`` (density convention, ties are outside).

    Returns ``vertices`` (N, 3) with the dtype and device of ``values`` (float32 for non-float input) and ``faces``
    (M, 3) int64, counter-clockwise seen from outside (normals point toward decreasing values). Vertices are shared
    between cells (one per crossed lattice edge) so a closed surface is watertight. Gradients flow from the vertices
    to ``values``.

    ``backend``: ``"torch"`` (default, tested, crack-free), ``"diso"`` (``diso.DiffMC``, CUDA only; raises if
    unavailable) or ``"auto"`` (diso when available on the tensor's device, torch otherwise).

    ``join_inside``: on a cube face whose two inside corners are diagonally opposite, connect the inside across the
    face (diso's choice) instead of separating the corners (the default). Either rule is crack-free.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be (X, Y, Z), got shape {tuple(values.shape)}")
    if backend not in ("auto", "torch", "diso"):
        raise ValueError(f"unknown marching cubes backend {backend!r}")
    if not values.is_floating_point():
        values = values.float()
    level = float(level)
    bmin = torch.as_tensor(bbox_min, dtype=values.dtype, device=values.device).reshape(3)
    bmax = torch.as_tensor(bbox_max, dtype=values.dtype, device=values.device).reshape(3)

    use_diso = backend == "diso" or (backend == "auto" and diso_available(values.device))
    if use_diso:
        if not diso_available(values.device):
            raise RuntimeError("backend='diso' needs the optional 'diso' package and a CUDA tensor")
        if min(values.shape) >= 2:
            out = _diso_marching_cubes(values, level, bmin, bmax)
            if out is not None:
                return out
    return _torch_marching_cubes(values, level, bmin, bmax, join_inside)
