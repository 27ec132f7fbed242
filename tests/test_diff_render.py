"""Differentiable renderer: gradients against finite differences (silhouettes, interiors), forward against the
hard rasteriser, batching and back-face culling, and the nvdiffrast path against the torch one (GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import diff_render
from backend.cameras import Camera, intrinsics, look_at
from backend.diff_render import edge_topology, render
from backend.mesh import Mesh
from backend.mesh_render import render_mesh
from backend.raster import rasterize


def cube(half: float = 0.5, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned cube, 12 faces wound counter-clockwise seen from outside."""
    v = torch.tensor([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], dtype=dtype)
    f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]  # fmt: skip
    return v, torch.tensor(f)


def icosphere(level: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere (20 · 4**level faces, outward winding)."""
    t = (1 + 5**0.5) / 2
    pts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
           [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]  # fmt: skip
    faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
             [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
             [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]  # fmt: skip
    verts = [np.asarray(p, dtype=np.float64) / np.linalg.norm(p) for p in pts]
    for _ in range(level):
        middle: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int, middle: dict = middle) -> int:
            key = (min(a, b), max(a, b))
            if key not in middle:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                middle[key] = len(verts) - 1
            return middle[key]

        split = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            split += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = split
    return torch.tensor(np.array(verts), dtype=dtype), torch.tensor(faces)


def pinhole(size: int = 32) -> Camera:
    K = intrinsics(1.25 * size, 1.25 * size, size / 2 + 0.3, size / 2 - 0.3)
    return Camera(look_at((1.7, -2.3, 1.3), (0.0, 0.0, 0.0)), K, size, size)


def ortho(size: int = 32) -> Camera:
    K = intrinsics(0.35 * size, 0.33 * size, size / 2 + 0.2, size / 2 - 0.4)
    return Camera(look_at((-1.1, -3.0, 0.9), (0.0, 0.0, 0.0)), K, size, size, orthographic=True)


def relative_fd_error(loss, x: torch.Tensor, eps: float) -> tuple[float, torch.Tensor]:
    """Relative error (norm of the difference / norm) between autograd and central differences of ``loss`` at x."""
    xg = x.clone().requires_grad_(True)
    loss(xg).backward()
    fd = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            d = torch.zeros_like(x)
            d[i, j] = eps
            fd[i, j] = (loss(x + d) - loss(x - d)) / (2 * eps)
    return float((xg.grad - fd).norm() / fd.norm()), fd


@pytest.mark.parametrize("camera", [pinhole(), ortho()], ids=["pinhole", "orthographic"])
def test_silhouette_gradients_match_finite_differences(camera):
    v, f = cube()
    weights = torch.rand((32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(vv, antialias=True):
        return (render(vv, f, [camera], antialias=antialias, backend="torch").mask[0] * weights).sum()

    error, fd = relative_fd_error(loss, v, 1e-5)
    # Measured 8.8e-11 (pinhole) and 1.1e-10 (orthographic) in float64: the antialiased coverage is piecewise
    # smooth in the vertices, so central differences agree to rounding.
    assert error < 1e-9
    assert fd.norm() > 50.0  # real silhouette gradients (measured norms 140 and 106)
    # A hard rasteriser has none: without antialiasing the coverage does not depend on the vertices at all.
    assert not loss(v.clone().requires_grad_(True), antialias=False).requires_grad


def test_silhouette_gradients_with_subpixel_triangles():
    # 1280 faces over ~300 covered pixels: most triangles near the rim are smaller than a pixel, so the edge
    # crossing a pixel pair usually belongs to neither pixel's triangle; the silhouette edges are found per view.
    v, f = icosphere(3, dtype=torch.float64)
    v = v * 0.8
    camera = pinhole(24)
    weights = torch.rand((24, 24), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    topo = edge_topology(f)
    picked = torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(3))[:6]

    def loss_of(subset):
        def loss(x):
            full = v.clone()
            full[subset] = x
            return (render(full, f, [camera], topology=topo, backend="torch").mask[0] * weights).sum()

        return loss

    rim_vertices = _rim_vertices(v, f, camera)[:6]
    for subset in (rim_vertices, picked):
        error, fd = relative_fd_error(loss_of(subset), v[subset], 1e-6)
        # Measured 1.3e-9 (six rim vertices, gradient norm 17.5) and 2.6e-9 (six random ones, norm 6.9).
        assert error < 1e-8
        assert fd.norm() > 3.0


def _rim_vertices(v: torch.Tensor, f: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Vertices of the silhouette edges of ``camera`` (front/back face pairs)."""
    topo = edge_topology(f)
    facing = diff_render._facing(v, f, camera)
    sil = facing[topo.faces[:, 0]] != facing[topo.faces[:, 1]]
    return torch.unique(topo.edges[sil].reshape(-1))


def test_attribute_depth_and_normal_gradients_inside_triangles():
    v, f = cube()
    camera = pinhole()
    g = torch.Generator().manual_seed(4)
    colours = torch.rand((8, 3), generator=g, dtype=torch.float64)
    w_attr = torch.rand((32, 32, 3), generator=g, dtype=torch.float64)
    w_depth = torch.rand((32, 32), generator=g, dtype=torch.float64)
    w_norm = torch.rand((32, 32, 3), generator=g, dtype=torch.float64)

    def loss(vv, cc=colours, smooth=False):
        r = render(vv, f, [camera], cc, smooth_normals=smooth, antialias=False, backend="torch")
        return (r.attributes[0] * w_attr).sum() + (r.depth[0] * w_depth).sum() + (r.normals[0] * w_norm).sum()

    error, fd = relative_fd_error(loss, v, 1e-6)
    assert error < 1e-8  # measured 1.1e-9 (float64, perspective-correct barycentrics and depth)
    assert fd.norm() > 50.0  # measured 164
    error, _ = relative_fd_error(lambda vv: loss(vv, smooth=True), v, 1e-6)
    assert error < 1e-8  # measured 8.8e-10
    error, _ = relative_fd_error(lambda cc: loss(v, cc), colours, 1e-6)
    assert error < 1e-8  # measured 8.9e-10


@pytest.mark.parametrize("camera", [pinhole(48), ortho(48)], ids=["pinhole", "orthographic"])
def test_forward_matches_hard_rasteriser_away_from_edges(camera):
    v, f = icosphere(2)
    v = v * torch.tensor([0.9, 0.7, 0.8])
    colours = v * 0.5 + 0.5
    r = render(v, f, [camera], colours, backend="torch")
    frags = rasterize(v, f, camera)
    hard = frags.mask
    # Coverage: the antialiased mask rounds to the hard one everywhere and is exactly 0 or 1 off the silhouette.
    assert torch.equal(r.mask[0] > 0.5, hard)
    blended = (r.mask[0] > 0) & (r.mask[0] < 1)
    assert 0 < int(blended.sum()) < 0.2 * int(hard.sum())
    interior = hard & ~blended
    assert torch.equal(r.triangle_id[0], frags.triangle_id)
    assert torch.allclose(r.depth[0][hard], frags.depth[hard], atol=1e-5)
    image = render_mesh(Mesh(v, f, vertex_colors=colours), camera, background=(0.0, 0.0, 0.0))
    assert torch.allclose(r.attributes[0][interior], image[interior], atol=1e-5)
    normals = Mesh(v, f).face_normals()[frags.triangle_id[hard]]
    assert torch.allclose(r.normals[0][hard], normals, atol=1e-5)


def test_batched_vertices_and_backface_culling():
    v, f = icosphere(2)
    cams = [pinhole(40), ortho(40)]
    moved = torch.stack([v * 0.8, v * 0.6 + 0.1])
    batched = render(moved, f, cams, moved * 0.5 + 0.5)
    for k, cam in enumerate(cams):
        one = render(moved[k], f, [cam], moved[k] * 0.5 + 0.5)
        assert torch.equal(batched.mask[k], one.mask[0])
        assert torch.equal(batched.attributes[k], one.attributes[0])
    culled = render(moved, f, cams, moved * 0.5 + 0.5, cull_backfaces=True)
    assert torch.equal(culled.triangle_id, batched.triangle_id)
    assert torch.allclose(culled.mask, batched.mask)


@pytest.mark.gpu
def test_nvdiffrast_path_matches_torch_path():
    pytest.importorskip("nvdiffrast.torch")
    v, f = icosphere(3)
    v = v * 0.8
    cams = [pinhole(64), ortho(64)]
    colours = v * 0.5 + 0.5
    ref = render(v, f, cams, colours, backend="torch")
    vc = v.cuda().requires_grad_(True)
    out = render(vc, f.cuda(), cams, colours.cuda(), backend="nvdiffrast")
    hard = rasterize(v, f, cams[0]).mask
    assert float(((out.mask.cpu() > 0.5) != (ref.mask > 0.5)).float().mean()) < 0.005
    inside = (ref.mask == 1) & (out.mask.cpu() == 1)
    assert torch.allclose(out.depth.detach().cpu()[inside], ref.depth[inside], atol=1e-3)
    assert torch.allclose(out.attributes.detach().cpu()[inside], ref.attributes[inside], atol=1e-3)
    assert torch.allclose(out.normals.detach().cpu()[inside], ref.normals[inside], atol=1e-3)
    assert int(hard.sum()) > 0
    out.mask.sum().backward()
    assert float(vc.grad.abs().sum()) > 0


def test_dense_bumpy_mesh_keeps_coverage_in_range():
    """A marching-cubes mesh with many triangles per pixel has an outline that wiggles below the pixel size, so
    several silhouette edges cross one pair of pixel centres; each pair takes one crossing, so the antialiased
    coverage stays a coverage. (Adding every crossing gave values from −7 to 7 on the demo's mesh.)"""
    from backend.marching_cubes import marching_cubes

    torch.manual_seed(0)
    axis = torch.linspace(-1, 1, 72)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    bumps = 0.04 * torch.sin(23 * x) * torch.sin(19 * y) * torch.sin(17 * z)
    vertices, faces = marching_cubes(0.6 + bumps - (x * x + y * y + z * z).sqrt(), 0.0)
    assert faces.shape[0] > 15000  # 18,380 faces over 307 covered pixels: about 60 per pixel
    camera = pinhole(40)
    with torch.no_grad():
        out = render(vertices, faces, [camera])
        hard = rasterize(vertices, faces, camera).mask.float()
    mask = out.mask[0]
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert float((mask - hard).abs().sum()) < 20.0  # measured 15.9 (every crossing added: 33.2, range −0.41..1.74)
