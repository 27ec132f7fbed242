import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backend.marching_cubes import MarchingCubesConfig, _case_table, diso_available, marching_cubes


def _lattice(shape, bmin=(-1.0, -1.0, -1.0), bmax=(1.0, 1.0, 1.0), dtype=torch.float64, device="cpu"):
    axes = [torch.linspace(lo, hi, n, dtype=dtype, device=device) for lo, hi, n in zip(bmin, bmax, shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _sphere(n, radius=0.6, centre=(0.0, 0.0, 0.0), dtype=torch.float64, device="cpu"):
    p = _lattice((n, n, n), dtype=dtype, device=device)
    return radius - (p - torch.tensor(centre, dtype=dtype, device=device)).norm(dim=-1)


def _edges(faces: torch.Tensor) -> np.ndarray:
    f = faces.cpu().numpy()
    return np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def _assert_closed_oriented(faces: torch.Tensor) -> None:
    """Every undirected edge is in exactly two faces, traversed once in each direction."""
    directed = _edges(faces)
    assert len(directed) > 0
    assert (directed[:, 0] != directed[:, 1]).all(), "degenerate triangle (repeated vertex index)"
    n = int(directed.max()) + 1
    key = directed[:, 0] * n + directed[:, 1]
    assert len(np.unique(key)) == len(key), "a directed edge is used twice: inconsistent winding or non-manifold"
    _, counts = np.unique(np.sort(directed, axis=1) @ np.array([n, 1]), return_counts=True)
    assert (counts == 2).all(), f"edges with face counts {np.unique(counts)} (cracks or non-manifold edges)"


def _euler(vertices: torch.Tensor, faces: torch.Tensor) -> int:
    n_edges = len(np.unique(np.sort(_edges(faces), axis=1) @ np.array([vertices.shape[0], 1])))
    return vertices.shape[0] - n_edges + faces.shape[0]


def _components(vertices: torch.Tensor, faces: torch.Tensor) -> int:
    e = _edges(faces)
    n = vertices.shape[0]
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(adj, directed=False)[0]


def _signed_volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    t = vertices.detach().double()[faces]
    return float((t[:, 0] * torch.cross(t[:, 1], t[:, 2], dim=-1)).sum() / 6.0)


def test_case_table_shape():
    table, counts = _case_table()
    assert table.shape == (256, 5, 3)
    assert counts[0] == 0 and counts[255] == 0
    assert (counts[1:255] >= 1).all()
    for case in range(256):
        assert (table[case, : counts[case]] >= 0).all() and (table[case, counts[case] :] == -1).all()


def test_sphere_watertight_accurate_outward():
    n, r = 48, 0.6
    v, f = marching_cubes(_sphere(n, r), 0.0)
    assert v.dtype == torch.float64 and f.dtype == torch.int64 and v.shape[1] == 3 and f.shape[1] == 3
    _assert_closed_oriented(f)
    assert _euler(v, f) == 2
    assert _components(v, f) == 1
    assert f.max() == v.shape[0] - 1 and f.min() == 0  # every vertex is used
    cell = 2.0 / (n - 1)
    assert float((v.norm(dim=1) - r).abs().max()) < 0.05 * cell
    vol = _signed_volume(v, f)
    assert vol > 0
    assert vol == pytest.approx(4.0 / 3.0 * math.pi * r**3, rel=0.02)
    # face normals point away from the centre (toward decreasing density)
    t = v[f]
    normals = torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1)
    assert (torch.einsum("ij,ij->i", normals, t.mean(1)) > 0).float().mean() > 0.99


def test_torus():
    n, big, small = 64, 0.6, 0.25
    p = _lattice((n, n, n))
    ring = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - big
    density = small - torch.sqrt(ring**2 + p[..., 2] ** 2)
    v, f = marching_cubes(density, 0.0)
    _assert_closed_oriented(f)
    assert _euler(v, f) == 0
    assert _components(v, f) == 1
    assert _signed_volume(v, f) == pytest.approx(2 * math.pi**2 * big * small**2, rel=0.03)


def test_two_spheres():
    n = 48
    a = _sphere(n, 0.3, centre=(-0.5, 0.0, 0.0))
    b = _sphere(n, 0.3, centre=(0.5, 0.1, 0.0))
    v, f = marching_cubes(torch.maximum(a, b), 0.0)
    _assert_closed_oriented(f)
    assert _components(v, f) == 2
    assert _euler(v, f) == 4
    assert _signed_volume(v, f) == pytest.approx(2 * 4.0 / 3.0 * math.pi * 0.3**3, rel=0.03)


def _ambiguous_face_count(inside: np.ndarray) -> int:
    """Lattice faces whose four corners alternate inside / outside (the ambiguous marching-cubes faces)."""
    total = 0
    for axis in range(3):
        m = np.moveaxis(inside, axis, 0)
        a, b, c, d = m[:, :-1, :-1], m[:, 1:, :-1], m[:, 1:, 1:], m[:, :-1, 1:]
        total += int(((a == c) & (b == d) & (a != b)).sum())
    return total


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_random_field_has_no_cracks(sigma):
    rng = np.random.default_rng(1234)
    field = rng.standard_normal((36, 36, 36))
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma)
    field[[0, -1], :, :] = field[:, [0, -1], :] = field[:, :, [0, -1]] = -1.0  # closed: outside on the boundary
    assert _ambiguous_face_count(field > 0) > 200  # the test really exercises the ambiguous faces
    values = torch.from_numpy(field)
    v, f = marching_cubes(values, 0.0)
    _assert_closed_oriented(f)
    assert torch.isfinite(v).all()
    assert _signed_volume(v, f) > 0
    # vertex count = number of crossed lattice edges
    ins = field > 0
    crossed = sum(int((np.diff(ins.astype(np.int8), axis=a) != 0).sum()) for a in range(3))
    assert v.shape[0] == crossed


def test_values_equal_to_level_are_outside_and_stay_closed():
    rng = np.random.default_rng(7)
    field = rng.integers(-1, 2, size=(20, 20, 20)).astype(np.float32)  # many values exactly at the level
    field[[0, -1], :, :] = field[:, [0, -1], :] = field[:, :, [0, -1]] = 0.0
    v, f = marching_cubes(torch.from_numpy(field), 0.0)
    assert v.dtype == torch.float32
    assert torch.isfinite(v).all()
    _assert_closed_oriented(f)
    # ties are outside: with all values in {0, 1} at level 0 the surface is the same as at level 0.5's sign split
    v2, f2 = marching_cubes(torch.from_numpy(np.maximum(field, 0.0)), 0.0)
    v3, f3 = marching_cubes(torch.from_numpy(np.maximum(field, 0.0)), 0.5)
    assert torch.equal(f2, f3)
    assert v2.shape == v3.shape


def test_gradcheck_small_sphere():
    values = _sphere(6, 0.55).requires_grad_(True)
    n_vert = marching_cubes(values.detach(), 0.0)[0].shape[0]
    assert n_vert > 0
    weights = torch.randn(n_vert, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def fn(x):
        verts, _ = marching_cubes(x, 0.0, (-1, -2, -3), (2, 1, 0))
        return (verts * weights).sum()

    assert torch.autograd.gradcheck(fn, (values,), eps=1e-6, atol=1e-6)


def test_gradient_matches_edge_interpolation():
    # single x-edge crossing between two grid values: vertex x = t = (level - v0) / (v1 - v0) in lattice units
    values = -torch.ones(2, 2, 2, dtype=torch.float64)
    values[0, 0, 0] = 0.75
    values.requires_grad_(True)
    v, f = marching_cubes(values, 0.25, (0, 0, 0), (1, 1, 1))
    assert v.shape == (3, 3) and f.shape == (1, 3)
    x_vertex = int(torch.argmax(v[:, 0]))
    t = (0.25 - 0.75) / (-1.0 - 0.75)
    assert float(v[x_vertex, 0].detach()) == pytest.approx(t)
    v[x_vertex, 0].backward()
    # dt/dv0 = (level - v1) / (v1 - v0)^2, dt/dv1 = -(level - v0) / (v1 - v0)^2
    assert float(values.grad[0, 0, 0]) == pytest.approx((0.25 + 1.0) / 1.75**2)
    assert float(values.grad[1, 0, 0]) == pytest.approx(-(0.25 - 0.75) / 1.75**2)
    assert float(values.grad.abs().sum()) == pytest.approx(float(values.grad[:2, 0, 0].abs().sum()))


def test_bbox_mapping_and_axis_order():
    shape = (30, 40, 22)
    bmin, bmax = (0.5, -2.0, 1.0), (2.5, 2.0, 2.0)
    p = _lattice(shape, bmin, bmax)
    centre = torch.tensor([1.4, -0.3, 1.5], dtype=torch.float64)
    r = 0.4
    v, f = marching_cubes(r - (p - centre).norm(dim=-1), 0.0, bmin, bmax)
    _assert_closed_oriented(f)
    lo, hi = torch.tensor(bmin, dtype=torch.float64), torch.tensor(bmax, dtype=torch.float64)
    assert ((v >= lo) & (v <= hi)).all()
    spacing = (hi - lo) / (torch.tensor(shape, dtype=torch.float64) - 1)
    assert float(((v - centre).norm(dim=1) - r).abs().max()) < 0.1 * float(spacing.min())
    assert _signed_volume(v, f) == pytest.approx(4.0 / 3.0 * math.pi * r**3, rel=0.03)

    # the same grid values on a different box: vertices map affinely, faces unchanged
    v_unit, f_unit = marching_cubes(r - (p - centre).norm(dim=-1), 0.0)
    assert torch.equal(f_unit, f)
    assert torch.allclose(lo + (v_unit + 1.0) / 2.0 * (hi - lo), v, atol=1e-12)


def test_empty_and_tiny_inputs():
    for vals in (-torch.ones(8, 8, 8), torch.ones(8, 8, 8), torch.zeros(1, 5, 5)):
        v, f = marching_cubes(vals, 0.0)
        assert v.shape == (0, 3) and f.shape == (0, 3)
        assert v.dtype == torch.float32 and f.dtype == torch.int64
    x = -torch.ones(4, 4, 4, requires_grad=True)
    v, _ = marching_cubes(x, 0.0)
    v.sum().backward()  # empty result is still part of the graph


def test_non_contiguous_and_config():
    base = _sphere(20, 0.5, centre=(0.1, -0.2, 0.05))
    permuted = base.permute(2, 1, 0)
    v1, f1 = marching_cubes(permuted, 0.0)
    v2, f2 = MarchingCubesConfig().extract(permuted.contiguous())
    assert torch.equal(f1, f2) and torch.allclose(v1, v2)


def test_backend_selection_on_cpu():
    assert not diso_available("cpu")
    values = _sphere(16, 0.5)
    v_auto, f_auto = marching_cubes(values, 0.0, backend="auto")
    v_torch, f_torch = marching_cubes(values, 0.0, backend="torch")
    assert torch.equal(f_auto, f_torch) and torch.equal(v_auto, v_torch)
    with pytest.raises(RuntimeError):
        marching_cubes(values, 0.0, backend="diso")
    with pytest.raises(ValueError):
        marching_cubes(values, 0.0, backend="nope")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    values = _sphere(48, 0.6, dtype=torch.float32)
    v_cpu, f_cpu = marching_cubes(values, 0.0, backend="torch")
    v_gpu, f_gpu = marching_cubes(values.cuda().requires_grad_(True), 0.0, backend="torch")
    assert v_gpu.device.type == "cuda" and f_gpu.device.type == "cuda"
    assert torch.equal(f_gpu.cpu(), f_cpu)
    assert torch.allclose(v_gpu.detach().cpu(), v_cpu, atol=1e-6)
    v_gpu.sum().backward()
