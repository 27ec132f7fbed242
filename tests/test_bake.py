"""Baking tests: vertex colours, xatlas UV atlas + texture, dilation and seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from backend.bake import BakeConfig, bake, dilate, uv_to_pixels
from backend.errors import Cancelled
from backend.mesh import Mesh
from backend.progress import Hooks
from backend.raster import rasterize_2d

SLOPE = torch.tensor([0.4, 0.3, -0.35])


def color_fn(points: torch.Tensor) -> torch.Tensor:
    """A smooth (linear) colour field, strictly inside (0, 1) on the unit-ish shapes used here."""
    return 0.5 + points * SLOPE.to(points)


def to_mesh(tm: trimesh.Trimesh) -> Mesh:
    return Mesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))


def cube() -> Mesh:
    return to_mesh(trimesh.creation.box(extents=(2.0, 2.0, 2.0)))


def sphere() -> Mesh:
    return to_mesh(trimesh.creation.icosphere(subdivisions=2, radius=1.0))


def sample_bilinear(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of (T, T, 3) at (P, 2) UVs (v up, texel centres at (k + 0.5) / T), clamped at the border."""
    T = texture.shape[0]
    x = uv[:, 0] * T - 0.5
    y = (1.0 - uv[:, 1]) * T - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()

    def at(yy, xx):
        return texture[yy.clamp(0, T - 1), xx.clamp(0, T - 1)]

    return (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )


def bilinear_taps(T: int, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (P, 4) of the four texels a bilinear lookup at ``uv`` reads."""
    x = torch.floor(uv[:, 0] * T - 0.5).long()
    y = torch.floor((1.0 - uv[:, 1]) * T - 0.5).long()
    rows = torch.stack([y, y, y + 1, y + 1], 1).clamp(0, T - 1)
    cols = torch.stack([x, x + 1, x, x + 1], 1).clamp(0, T - 1)
    return rows, cols


@pytest.fixture(scope="module")
def baked_sphere() -> tuple[Mesh, Mesh]:
    mesh = sphere()
    return mesh, bake(mesh, color_fn, BakeConfig(texture="uv", texture_size=256, dilation=4))


@pytest.fixture(scope="module")
def baked_cube() -> tuple[Mesh, Mesh]:
    mesh = cube()
    return mesh, bake(mesh, color_fn, BakeConfig(texture="uv", texture_size=128, dilation=3))


def test_vertex_mode_equals_function_at_vertices():
    mesh = sphere()
    calls = []
    hooks = Hooks(progress=lambda stage, step, total, message: calls.append((stage, step, total)))
    out = bake(mesh, color_fn, BakeConfig(texture="vertex", chunk=50), hooks)
    assert out.vertex_colors.shape == (mesh.num_vertices, 3) and out.vertex_colors.dtype == torch.float32
    torch.testing.assert_close(out.vertex_colors, color_fn(mesh.vertices))
    assert out.uvs is None and out.texture is None
    assert torch.equal(out.vertices, mesh.vertices) and torch.equal(out.faces, mesh.faces)
    n_chunks = -(-mesh.num_vertices // 50)
    assert {c[0] for c in calls} == {"bake"} and len(calls) >= n_chunks
    assert calls[-1][1] == calls[-1][2]


def test_chunks_bound_color_fn_calls_and_clamp():
    seen = []

    def fn(p):
        seen.append(len(p))
        return torch.full((len(p), 3), 2.0)  # out of range: clamped

    out = bake(sphere(), fn, BakeConfig(texture="vertex", chunk=17))
    assert max(seen) <= 17 and sum(seen) == out.num_vertices
    assert torch.all(out.vertex_colors == 1.0)


def test_cancel_stops_baking():
    hooks = Hooks()
    hooks.cancel()
    with pytest.raises(Cancelled):
        bake(sphere(), color_fn, BakeConfig(texture="vertex"), hooks)


def test_xatlas_keeps_face_order():
    import xatlas

    for tm in (trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=2)):
        vmapping, indices, _uvs = xatlas.parametrize(tm.vertices.astype(np.float32), tm.faces.astype(np.uint32))
        assert indices.shape == tm.faces.shape
        np.testing.assert_array_equal(vmapping[indices], tm.faces)


@pytest.mark.parametrize("which", ["baked_sphere", "baked_cube"])
def test_uv_mode_shapes_and_geometry(which, request):
    mesh, out = request.getfixturevalue(which)
    T = out.texture.shape[0]
    assert out.texture.shape == (T, T, 3) and out.texture.dtype == torch.float32
    assert out.uvs.shape == (mesh.num_faces, 3, 2) and out.uvs.dtype == torch.float32
    assert out.vertex_colors is None
    assert torch.equal(out.vertices, mesh.vertices) and torch.equal(out.faces, mesh.faces)
    assert bool(((out.uvs >= 0) & (out.uvs <= 1)).all())
    # Every face gets a non-degenerate UV triangle.
    d1 = out.uvs[:, 1] - out.uvs[:, 0]
    d2 = out.uvs[:, 2] - out.uvs[:, 0]
    assert bool(((d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).abs() > 1e-7).all())
    assert float(out.texture.min()) >= 0.0 and float(out.texture.max()) <= 1.0


@pytest.mark.parametrize("which,tol", [("baked_sphere", 1e-5), ("baked_cube", 1e-5)])
def test_texture_at_face_centroids_matches_color_fn(which, tol, request):
    mesh, out = request.getfixturevalue(which)
    uv_centroid = out.uvs.mean(dim=1)
    sampled = sample_bilinear(out.texture, uv_centroid)
    expected = color_fn(mesh.vertices[mesh.faces].mean(dim=1))
    err = (sampled - expected).abs().max()
    assert float(err) < tol, float(err)


def coverage(out: Mesh) -> torch.Tensor:
    T = out.texture.shape[0]
    M = out.num_faces
    pts = uv_to_pixels(out.uvs, T).reshape(-1, 2)
    return rasterize_2d(pts, torch.arange(3 * M).reshape(M, 3), T, T).mask


def ring(mask: torch.Tensor, width: int) -> torch.Tensor:
    grown = F.max_pool2d(mask[None, None].float(), 2 * width + 1, stride=1, padding=width)[0, 0] > 0
    return grown & ~mask


@pytest.mark.parametrize("which", ["baked_sphere", "baked_cube"])
def test_dilation_fills_ring_around_charts(which, request):
    mesh, out = request.getfixturevalue(which)
    mask = coverage(out)
    assert bool((out.texture[mask].min(dim=-1).values > 0).all())
    first = ring(mask, 1)
    assert first.sum() > 0
    assert bool((out.texture[first].min(dim=-1).values > 0).all())  # every texel next to a chart is filled
    # Without dilation the same ring is black: the colour there really comes from dilation.
    T = out.texture.shape[0]
    plain = bake(mesh, color_fn, BakeConfig(texture="uv", texture_size=T, dilation=0))
    assert torch.equal(coverage(plain), mask)
    assert bool((plain.texture[first] == 0).all())
    # Dilated values are plausible colours (averages of neighbouring chart colours).
    lo, hi = out.texture[mask].min(dim=0).values, out.texture[mask].max(dim=0).values
    assert bool(((out.texture[first] >= lo - 1e-6) & (out.texture[first] <= hi + 1e-6)).all())


def test_dilate_grows_exactly_n_texels():
    image = torch.zeros((21, 21, 3))
    mask = torch.zeros((21, 21), dtype=torch.bool)
    mask[10, 10] = True
    image[10, 10] = torch.tensor([0.2, 0.4, 0.6])
    out = dilate(image, mask, 3)
    filled = out.abs().sum(-1) > 0
    expected = torch.zeros_like(mask)
    expected[7:14, 7:14] = True
    assert torch.equal(filled, expected)
    torch.testing.assert_close(out[filled], image[10, 10].expand(int(filled.sum()), 3))


@pytest.mark.parametrize("which", ["baked_sphere", "baked_cube"])
def test_seam_texels_are_not_black(which, request):
    mesh, out = request.getfixturevalue(which)
    T = out.texture.shape[0]
    faces = mesh.faces.numpy()
    uvs = out.uvs
    # Seam edges: an edge shared by two faces whose UVs for that edge differ.
    first_use: dict[tuple[int, int], tuple[int, int]] = {}
    seam_uv = []
    for f, tri in enumerate(faces):
        for k in range(3):
            a, b = int(tri[k]), int(tri[(k + 1) % 3])
            key = (min(a, b), max(a, b))
            if key in first_use:
                g, m = first_use[key]
                ua, ub = uvs[f, k], uvs[f, (k + 1) % 3]
                other = {int(faces[g][m]): uvs[g, m], int(faces[g][(m + 1) % 3]): uvs[g, (m + 1) % 3]}
                if not (torch.allclose(ua, other[a]) and torch.allclose(ub, other[b])):
                    seam_uv += [(ua, ub), (other[a], other[b])]
            else:
                first_use[key] = (f, k)
    assert seam_uv, "expected the atlas to have seams"
    t = torch.linspace(0.0, 1.0, 9)[:, None]
    points = torch.cat([ua[None] * (1 - t) + ub[None] * t for ua, ub in seam_uv])
    rows, cols = bilinear_taps(T, points)
    taps = out.texture[rows, cols]  # (P, 4, 3)
    assert bool((taps.min(dim=-1).values > 0).all()), "a bilinear tap on a seam reads an unfilled (black) texel"
    sampled = sample_bilinear(out.texture, points)
    assert float(sampled.min()) > 0.05


def test_unknown_mode_rejected():
    with pytest.raises(ValueError):
        bake(cube(), color_fn, BakeConfig(texture="ptex"))
