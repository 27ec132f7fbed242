"""Rasteriser tests: the torch backend against a slow per-triangle reference, plus geometric identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import raster
from backend.cameras import Camera, intrinsics, look_at, project
from backend.raster import Fragments, interpolate, rasterize, rasterize_2d

H, W = 24, 32


def pinhole_camera() -> Camera:
    K = intrinsics(30.0, 28.0, 15.3, 12.7)
    return Camera(look_at((0.3, -4.0, 0.6), (0.0, 0.0, 0.0)), K, W, H)


def ortho_camera() -> Camera:
    K = intrinsics(11.0, 9.0, 16.2, 11.8)
    return Camera(look_at((0.2, -4.0, -0.5), (0.0, 0.0, 0.0)), K, W, H, orthographic=True)


def random_mesh(seed: int, n_tri: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1.0, 1.0, size=(n_tri, 1, 3))
    verts = (centres + rng.normal(scale=0.45, size=(n_tri, 3, 3))).reshape(-1, 3)
    faces = np.arange(3 * n_tri).reshape(n_tri, 3)
    # A few shared-vertex triangles (a fan) so that shared edges are exercised too.
    fan_centre = len(verts)
    ring = np.array([[np.cos(a), 0.0, np.sin(a)] for a in np.linspace(0, 2 * np.pi, 7)[:-1]]) * 0.9
    verts = np.concatenate([verts, [[0.1, -0.5, 0.05]], ring + [0.1, -0.5, 0.05]])
    fan = [[fan_centre, fan_centre + 1 + k, fan_centre + 1 + (k + 1) % 6] for k in range(6)]
    faces = np.concatenate([faces, fan])
    return verts.astype(np.float32), faces.astype(np.int64)


def reference(verts: np.ndarray, faces: np.ndarray, camera: Camera, near: float = 1e-3):
    """Obvious per-triangle loop in float64. Returns the winner arrays and per-triangle coverage data."""
    uv, z = project(camera, verts.astype(np.float64))
    jj, ii = np.mgrid[0 : camera.height, 0 : camera.width]
    px, py = ii + 0.5, jj + 0.5
    tid = np.full((camera.height, camera.width), -1)
    bary = np.zeros((camera.height, camera.width, 3))
    depth = np.full((camera.height, camera.width), np.inf)
    inside_all, depth_all, edge_all = [], [], []
    for t, (a, b, c) in enumerate(faces):
        zs = z[[a, b, c]]
        p = uv[[a, b, c]]
        none = np.zeros_like(px, dtype=bool)
        area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])
        if zs.min() < near or abs(area) < 1e-12:
            inside_all.append(none)
            depth_all.append(np.full(px.shape, np.inf))
            edge_all.append(np.full(px.shape, np.inf))
            continue
        lam = []
        for k in range(3):
            q1, q2 = p[(k + 1) % 3], p[(k + 2) % 3]
            lam.append(((q1[0] - px) * (q2[1] - py) - (q1[1] - py) * (q2[0] - px)) / area)
        lam = np.stack(lam, -1)
        inside = (lam >= 0).all(-1)
        if camera.orthographic:
            w = lam
            d = (lam * zs).sum(-1)
        else:
            w = lam / zs
            d = 1.0 / w.sum(-1)
            w = w / w.sum(-1, keepdims=True)
        edge = np.full(px.shape, np.inf)
        for k in range(3):
            q1, q2 = p[k], p[(k + 1) % 3]
            e = q2 - q1
            s = np.clip(((px - q1[0]) * e[0] + (py - q1[1]) * e[1]) / (e @ e), 0.0, 1.0)
            edge = np.minimum(edge, np.hypot(px - q1[0] - s * e[0], py - q1[1] - s * e[1]))
        closer = inside & (d < depth)
        tid[closer] = t
        depth[closer] = d[closer]
        bary[closer] = w[closer]
        inside_all.append(inside)
        depth_all.append(np.where(inside, d, np.inf))
        edge_all.append(edge)
    depth[tid < 0] = 0.0
    return tid, bary, depth, np.stack(inside_all), np.stack(depth_all), np.stack(edge_all)


@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [None, 37], ids=["default-chunks", "tiny-chunks"])
def test_matches_brute_force(ortho, seed, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(raster, "CHUNK_CANDIDATES", budget)
    camera = ortho_camera() if ortho else pinhole_camera()
    verts, faces = random_mesh(seed)
    frags = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="torch")
    assert frags.triangle_id.shape == (H, W) and frags.triangle_id.dtype == torch.int64
    assert frags.barycentric.shape == (H, W, 3) and frags.barycentric.dtype == torch.float32
    assert frags.depth.shape == (H, W) and frags.depth.dtype == torch.float32
    tid_ref, bary_ref, depth_ref, _inside, dep, edge = reference(verts, faces, camera)
    tid = frags.triangle_id.numpy()
    assert (tid_ref >= 0).sum() > 0.3 * H * W  # the scene really covers the image

    same = tid == tid_ref
    jj, ii = np.nonzero(~same)
    for j, i in zip(jj, ii):
        mine, ref = tid[j, i], tid_ref[j, i]
        near_edge = (mine >= 0 and edge[mine, j, i] < 1e-4) or (ref >= 0 and edge[ref, j, i] < 1e-4)
        tie = mine >= 0 and ref >= 0 and abs(dep[mine, j, i] - dep[ref, j, i]) < 1e-5 * dep[ref, j, i]
        assert near_edge or tie, f"pixel ({i}, {j}): torch says {mine}, reference says {ref}"
    assert same.mean() > 0.98

    hit = same & (tid >= 0)
    np.testing.assert_allclose(frags.barycentric.numpy()[hit], bary_ref[hit], atol=2e-5)
    np.testing.assert_allclose(frags.depth.numpy()[hit], depth_ref[hit], rtol=1e-5)
    assert np.all(frags.barycentric.numpy()[tid < 0] == 0) and np.all(frags.depth.numpy()[tid < 0] == 0)
    np.testing.assert_allclose(frags.barycentric.numpy()[tid >= 0].sum(-1), 1.0, atol=1e-6)
    assert torch.equal(frags.mask, frags.triangle_id >= 0)


def tilted_plane() -> tuple[torch.Tensor, torch.Tensor]:
    """A 2 × 2 grid of quads in a plane seen at a grazing angle (perspective distortion matters)."""
    g = np.linspace(-1.5, 1.5, 3)
    xs, ys = np.meshgrid(g, g * 2.0, indexing="xy")
    verts = np.stack([xs.ravel(), ys.ravel(), 0.3 * ys.ravel() - 0.2], -1)
    faces = []
    for r in range(2):
        for c in range(2):
            a = r * 3 + c
            faces += [[a, a + 1, a + 4], [a, a + 4, a + 3]]
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces, dtype=torch.int64)


@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
def test_plane_barycentrics_reproject_to_pixel_centres(ortho):
    K = intrinsics(40.0, 40.0, 32.0, 24.0) if not ortho else intrinsics(12.0, 12.0, 32.0, 24.0)
    camera = Camera(look_at((0.0, -4.5, 1.2), (0.0, 0.0, 0.0)), K, 64, 48, orthographic=ortho)
    verts, faces = tilted_plane()
    frags = rasterize(verts, faces, camera)
    assert frags.mask.float().mean() > 0.3
    points = interpolate(verts, faces, frags)[frags.mask].double().numpy()
    uv, z = project(camera, points)
    jj, ii = torch.nonzero(frags.mask, as_tuple=True)
    centres = np.stack([ii.numpy() + 0.5, jj.numpy() + 0.5], -1)
    np.testing.assert_allclose(uv, centres, atol=2e-3)
    np.testing.assert_allclose(frags.depth[frags.mask].numpy(), z, rtol=1e-5)


def quad(x0, x1, z0, z1, y) -> np.ndarray:
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], dtype=np.float32)


@pytest.mark.parametrize("near_first", [False, True])
def test_zbuffer_two_overlapping_quads(near_first):
    camera = pinhole_camera()
    far_q = quad(-1.5, 0.5, -1.0, 1.0, y=1.0)  # farther from the camera (camera looks along +y)
    near_q = quad(-0.5, 1.5, -0.8, 1.2, y=-0.5)
    verts = np.concatenate([near_q, far_q] if near_first else [far_q, near_q])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    frags = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="torch")
    near_ids = {0, 1} if near_first else {2, 3}
    tid_ref, *_ = reference(verts, faces, camera)
    # Where the reference sees both quads, the near one must win.
    ids = frags.triangle_id.numpy()
    both = np.isin(tid_ref, list(near_ids))
    assert both.sum() > 50
    assert np.isin(ids[both], list(near_ids)).mean() > 0.97
    far_only = (tid_ref >= 0) & ~both
    assert far_only.sum() > 10 and not np.isin(ids[far_only], list(near_ids)).any()
    # Depth of the near quad is smaller than any far-quad depth.
    d = frags.depth.numpy()
    assert d[both].max() < d[far_only].min()


def test_rasterize_2d_square_covers_expected_centres():
    pts = torch.tensor([[2.2, 3.3], [10.7, 3.3], [10.7, 7.6], [2.2, 7.6]])
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize_2d(pts, tris, 12, 14)
    expected = np.zeros((12, 14), dtype=bool)
    expected[3:8, 2:11] = True  # centres 2.5 … 10.5 across, 3.5 … 7.5 down
    np.testing.assert_array_equal(frags.mask.numpy(), expected)
    assert torch.all(frags.depth == 0)
    xy = interpolate(pts, tris, frags)
    jj, ii = torch.nonzero(frags.mask, as_tuple=True)
    np.testing.assert_allclose(xy[frags.mask].numpy(), np.stack([ii + 0.5, jj + 0.5], -1), atol=1e-4)

    # The square spanning the whole image covers every pixel, with no cracks along the diagonal.
    full = rasterize_2d(torch.tensor([[0.0, 0.0], [14.0, 0.0], [14.0, 12.0], [0.0, 12.0]]), tris, 12, 14)
    assert bool(full.mask.all())


def test_big_triangles_and_band_splitting(monkeypatch):
    camera = pinhole_camera()
    verts = torch.tensor([[-8.0, 0.0, -8.0], [8.0, 0.0, -8.0], [0.0, 0.0, 10.0], [-0.5, -1.0, 0.0],
                          [0.5, -1.0, 0.0], [0.0, -1.0, 0.6]])  # fmt: skip
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    full = rasterize(verts, faces, camera, backend="torch")
    assert bool(full.mask.all())
    assert (full.triangle_id == 1).sum() > 20
    monkeypatch.setattr(raster, "CHUNK_CANDIDATES", 5)  # narrower than the image: every row is its own band
    banded = rasterize(verts, faces, camera, backend="torch")
    assert torch.equal(banded.triangle_id, full.triangle_id)
    torch.testing.assert_close(banded.barycentric, full.barycentric)
    torch.testing.assert_close(banded.depth, full.depth)


def test_triangles_behind_near_plane_are_skipped():
    camera = pinhole_camera()
    c = camera.centre
    # One triangle straddles the camera plane, one is entirely behind; both are dropped.
    offsets = np.array([[0, 1, 0], [1, -1, 0], [-1, -1, 0.5], [0, -2, 0], [-1, -2, 0], [0, -2, -1]])
    verts = torch.tensor(c + offsets, dtype=torch.float32)
    frags = rasterize(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), camera, backend="torch")
    assert not bool(frags.mask.any())
    empty = rasterize(verts, torch.zeros((0, 3), dtype=torch.int64), camera)
    assert not bool(empty.mask.any()) and empty.barycentric.shape == (H, W, 3)


def test_interpolate_gradient_matches_manual_sum():
    camera = pinhole_camera()
    verts, faces = random_mesh(3, n_tri=20)
    v = torch.from_numpy(verts)
    f = torch.from_numpy(faces)
    frags = rasterize(v, f, camera, backend="torch")
    rng = np.random.default_rng(0)
    attr = torch.tensor(rng.normal(size=(len(verts), 2)), dtype=torch.float64, requires_grad=True)
    weights = torch.tensor(rng.normal(size=(H, W, 2)), dtype=torch.float64)
    out = interpolate(attr, f, frags)
    assert out.shape == (H, W, 2) and out.dtype == torch.float64
    (out * weights).sum().backward()

    manual = np.zeros((len(verts), 2))
    value = np.zeros((H, W, 2))
    tid = frags.triangle_id.numpy()
    bary = frags.barycentric.double().numpy()
    a = attr.detach().numpy()
    for j in range(H):
        for i in range(W):
            t = tid[j, i]
            if t < 0:
                continue
            for k in range(3):
                manual[faces[t, k]] += bary[j, i, k] * weights[j, i].numpy()
                value[j, i] += bary[j, i, k] * a[faces[t, k]]
    assert np.abs(manual).sum() > 0
    np.testing.assert_allclose(attr.grad.numpy(), manual, atol=1e-10)
    np.testing.assert_allclose(out.detach().numpy(), value, atol=1e-10)

    # Per-corner attributes (M, 3, C) give the same result for corner values taken from the vertices.
    corner = attr.detach()[f].clone().requires_grad_(True)
    out_c = interpolate(corner, f, frags)
    torch.testing.assert_close(out_c, out.detach())
    (out_c * weights).sum().backward()
    assert corner.grad.abs().sum() > 0


def test_backend_validation():
    camera = pinhole_camera()
    verts, faces = random_mesh(0, n_tri=3)
    with pytest.raises(ValueError):
        rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="opengl")
    with pytest.raises(RuntimeError):
        rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="nvdiffrast")  # CPU tensors
    assert isinstance(rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera), Fragments)


# ------------------------------------------------------------------------------------------------------------
# CUDA checks: skipped without a GPU (and, for nvdiffrast, without the optional package).


def _cuda() -> bool:
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
def test_torch_backend_cuda_matches_cpu(ortho):
    camera = ortho_camera() if ortho else pinhole_camera()
    verts, faces = random_mesh(5)
    cpu = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="torch")
    gpu = rasterize(torch.from_numpy(verts).cuda(), torch.from_numpy(faces).cuda(), camera, backend="torch")
    assert (gpu.triangle_id.cpu() == cpu.triangle_id).float().mean() > 0.99
    same = gpu.triangle_id.cpu() == cpu.triangle_id
    torch.testing.assert_close(gpu.barycentric.cpu()[same], cpu.barycentric[same], atol=1e-5, rtol=0)


def _nvdiffrast_ok() -> bool:
    return _cuda() and raster.nvdiffrast_available("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not _nvdiffrast_ok(), reason="needs CUDA and nvdiffrast")
@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
def test_nvdiffrast_matches_torch(ortho):
    camera = ortho_camera() if ortho else pinhole_camera()
    camera = camera.scaled(256, 192)
    verts, faces = random_mesh(6, n_tri=200)
    v = torch.from_numpy(verts).cuda()
    f = torch.from_numpy(faces).cuda()
    ref = rasterize(v, f, camera, backend="torch")
    nv = rasterize(v, f, camera, backend="nvdiffrast")
    same = nv.triangle_id == ref.triangle_id
    assert same.float().mean() > 0.99  # differences only on edges / depth ties
    torch.testing.assert_close(nv.barycentric[same], ref.barycentric[same], atol=1e-3, rtol=0)
    torch.testing.assert_close(nv.depth[same], ref.depth[same], atol=0, rtol=1e-4)
    assert torch.all(nv.depth[~nv.mask] == 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _nvdiffrast_ok(), reason="needs CUDA and nvdiffrast")
def test_nvdiffrast_rasterize_2d_matches_torch():
    pts = torch.tensor([[2.2, 3.3], [10.7, 3.3], [10.7, 7.6], [2.2, 7.6], [0.0, 0.0], [3.0, 11.0]], device="cuda")
    tris = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 3]], device="cuda")
    ref = rasterize_2d(pts, tris, 12, 14, backend="torch")
    nv = rasterize_2d(pts, tris, 12, 14, backend="nvdiffrast")
    assert torch.equal(nv.mask, ref.mask)
    xy_ref = interpolate(pts, tris, ref)
    xy_nv = interpolate(pts, tris, nv)
    torch.testing.assert_close(xy_nv, xy_ref, atol=1e-3, rtol=0)


class _EmulatedNvdiffrast:
    """Stands in for ``nvdiffrast.torch`` on CPU, following its documented conventions: clip-space input, pixel
    centres sampled, image row r at NDC y = (2r + 1) / H - 1, output (u, v, z/w, triangle + 1) with u, v the
    perspective-correct weights of corners 0 and 1. Checks our clip-space set-up and output conversion."""

    contexts = 0

    class RasterizeCudaContext:
        def __init__(self, device=None):
            _EmulatedNvdiffrast.contexts += 1

    @staticmethod
    def rasterize(ctx, pos, tri, resolution, grad_db=True):
        Hr, Wr = resolution
        p = pos[0].double()
        w = p[:, 3]
        ndc = p[:, :3] / w[:, None]
        xy = torch.stack([(ndc[:, 0] + 1) * 0.5 * Wr, (ndc[:, 1] + 1) * 0.5 * Hr], 1)
        faces = tri.long()
        valid = ((ndc[faces, 2] >= -1) & (ndc[faces, 2] <= 1)).all(1)
        if bool((w != 1).any()):
            f = raster._torch_rasterize(xy, w, faces, valid, Hr, Wr, perspective=True)
        else:
            f = raster._torch_rasterize(xy, ndc[:, 2] + 2.0, faces, valid, Hr, Wr, perspective=False)
        rast = torch.stack([f.barycentric[..., 0], f.barycentric[..., 1], f.depth, (f.triangle_id + 1).float()], -1)
        return rast[None], None


@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
def test_nvdiffrast_adapter_with_emulated_rasteriser(ortho, monkeypatch):
    import sys
    import types

    module = types.ModuleType("nvdiffrast")
    module.torch = _EmulatedNvdiffrast
    monkeypatch.setitem(sys.modules, "nvdiffrast", module)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", _EmulatedNvdiffrast)
    monkeypatch.setattr(raster, "_NV_CONTEXTS", {})
    camera = ortho_camera() if ortho else pinhole_camera()
    verts, faces = random_mesh(4)
    v, f = torch.from_numpy(verts), torch.from_numpy(faces)
    ref = rasterize(v, f, camera, backend="torch")
    cam = raster._to_camera_frame(v, camera)
    valid = (cam[f, 2] >= 1e-3).all(1)
    emu = raster._nvdiffrast_rasterize(cam, f, valid, camera)
    emu2 = raster._nvdiffrast_rasterize(cam, f, valid, camera)
    assert _EmulatedNvdiffrast.contexts >= 1 and len(raster._NV_CONTEXTS) == 1  # context cached
    assert torch.equal(emu.triangle_id, emu2.triangle_id)
    same = emu.triangle_id == ref.triangle_id
    assert same.float().mean() > 0.98
    torch.testing.assert_close(emu.barycentric[same], ref.barycentric[same], atol=1e-4, rtol=0)
    torch.testing.assert_close(emu.depth[same], ref.depth[same], atol=0, rtol=1e-4)
    assert torch.all(emu.depth[~emu.mask] == 0) and torch.all(emu.barycentric[~emu.mask] == 0)
    # UV-space path: 2-D pixel coordinates through the same adapter.
    pts = torch.tensor([[2.2, 3.3], [10.7, 3.3], [10.7, 7.6], [2.2, 7.6]], dtype=torch.float64)
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])
    emu_2d = raster._nvdiffrast_call(raster._clip_2d(pts, 12, 14), tris, torch.ones(2, dtype=torch.bool), 12, 14, None)
    ref_2d = rasterize_2d(pts, tris, 12, 14, backend="torch")
    assert torch.equal(emu_2d.mask, ref_2d.mask)
    torch.testing.assert_close(interpolate(pts.float(), tris, emu_2d), interpolate(pts.float(), tris, ref_2d))


# ------------------------------------------------------------------------------------------------------------
# nvdiffrast triangle ids: float32 holds integers exactly only up to 2**24, so big meshes go in batches.


def _torch_batches(verts: np.ndarray, faces: np.ndarray, camera: Camera):
    """A ``rasterize_batch(start, stop)`` for :func:`raster.rasterize_in_batches` built on the torch rasteriser."""
    v, f = torch.from_numpy(verts), torch.from_numpy(faces)
    cam = raster._to_camera_frame(v, camera)
    xy, z = raster._camera_to_pixels(cam, camera), cam[:, 2]
    valid = (z[f] >= 1e-3).all(1)

    def batch(start: int, stop: int) -> Fragments:
        return raster._torch_rasterize(
            xy, z, f[start:stop], valid[start:stop], H, W, perspective=not camera.orthographic
        )

    return batch


@pytest.mark.parametrize("near_first", [False, True])
def test_batches_merge_keeps_the_nearest_quad(near_first):
    camera = pinhole_camera()
    far_q = quad(-1.5, 0.5, -1.0, 1.0, y=1.0)
    near_q = quad(-0.5, 1.5, -0.8, 1.2, y=-0.5)
    verts = np.concatenate([near_q, far_q] if near_first else [far_q, near_q])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    whole = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="torch")
    merged = raster.rasterize_in_batches(4, _torch_batches(verts, faces, camera), limit=2)  # one quad per batch
    assert torch.equal(merged.triangle_id, whole.triangle_id)
    near_ids = torch.tensor([0, 1] if near_first else [2, 3])
    assert int(torch.isin(merged.triangle_id, near_ids).sum()) > 50  # the near quad wins where both are seen
    torch.testing.assert_close(merged.barycentric, whole.barycentric)
    torch.testing.assert_close(merged.depth, whole.depth)


@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
@pytest.mark.parametrize("limit", [1, 7, 16])
def test_batches_merge_matches_one_pass(ortho, limit):
    camera = ortho_camera() if ortho else pinhole_camera()
    verts, faces = random_mesh(8)  # 46 triangles: 46, 7 or 3 batches
    whole = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), camera, backend="torch")
    merged = raster.rasterize_in_batches(len(faces), _torch_batches(verts, faces, camera), limit)
    same = merged.triangle_id == whole.triangle_id
    assert same.float().mean() > 0.99  # measured: 1.0 (only exact depth ties could differ)
    assert torch.equal(merged.mask, whole.mask)
    torch.testing.assert_close(merged.barycentric[same], whole.barycentric[same], atol=1e-6, rtol=0)
    torch.testing.assert_close(merged.depth, whole.depth, atol=0, rtol=1e-6)
    with pytest.raises(ValueError):
        raster.rasterize_in_batches(len(faces), _torch_batches(verts, faces, camera), 0)


def _round_significand(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to a float with a ``bits``-bit significand (round half to even): bits = 24 is float32's rounding."""
    mantissa, exponent = torch.frexp(x.to(torch.float64))
    return torch.ldexp(torch.round(mantissa * 2.0**bits) / 2.0**bits, exponent)


class _NarrowIdNvdiffrast(_EmulatedNvdiffrast):
    """The emulated nvdiffrast, with its triangle-id channel stored in a float whose significand has ``bits`` bits
    instead of float32's 24: ids above 2**bits are rounded, as float32 rounds ids above 2**24."""

    bits = 4

    @staticmethod
    def rasterize(ctx, pos, tri, resolution, grad_db=True):
        rast, _ = _EmulatedNvdiffrast.rasterize(ctx, pos, tri, resolution, grad_db)
        rast[..., 3] = _round_significand(rast[..., 3], _NarrowIdNvdiffrast.bits).to(rast.dtype)
        return rast, None


def test_round_significand_is_float32_rounding_at_24_bits():
    ids = torch.arange(2**24 - 4, 2**24 + 40, dtype=torch.float64)
    assert torch.equal(_round_significand(ids, 24), ids.to(torch.float32).to(torch.float64))
    assert float(_round_significand(torch.tensor(17.0), 4)) == 16.0  # the narrow emulation rounds id 17


@pytest.mark.parametrize("ortho", [False, True], ids=["pinhole", "orthographic"])
def test_nvdiffrast_ids_beyond_the_float_channel_are_exact(ortho, monkeypatch):
    import sys
    import types

    module = types.ModuleType("nvdiffrast")
    module.torch = _NarrowIdNvdiffrast
    monkeypatch.setitem(sys.modules, "nvdiffrast", module)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", _NarrowIdNvdiffrast)
    monkeypatch.setattr(raster, "_NV_CONTEXTS", {})
    # The same ratio as the real one: batches of at most 2**bits - 1 triangles, as NV_MAX_TRIANGLES = 2**24 - 1.
    monkeypatch.setattr(raster, "NV_MAX_TRIANGLES", 2**_NarrowIdNvdiffrast.bits - 1, raising=False)
    camera = ortho_camera() if ortho else pinhole_camera()
    verts, faces = random_mesh(4)  # 46 triangles, most with ids above 2**4
    v, f = torch.from_numpy(verts), torch.from_numpy(faces)
    ref = rasterize(v, f, camera, backend="torch")
    cam = raster._to_camera_frame(v, camera)
    valid = (cam[f, 2] >= 1e-3).all(1)
    emu = raster._nvdiffrast_rasterize(cam, f, valid, camera)
    same = emu.triangle_id == ref.triangle_id
    # Measured: 1.0 in batches. In one call the rounded ids pick wrong triangles (id 47 → 48 even indexes past
    # the 46 faces: IndexError before batching existed).
    assert same.float().mean() > 0.98
    assert torch.equal(emu.mask, ref.mask)
    torch.testing.assert_close(emu.depth[same], ref.depth[same], atol=0, rtol=1e-4)
