"""Triplane sampling conventions (GTR): plane order, interleaved features, border padding."""

import torch

from backend.field import FieldConfig, TriplaneField, density_grid, requires_grad, sample_planes


def test_plane_axes_and_interleaved_order():
    R, C = 4, 2
    planes = torch.zeros(3, C, R, R)
    # A feature that varies along the columns (u) of plane 0 only, and along the rows (v) of plane 2 only.
    planes[0, 0] = torch.arange(R, dtype=torch.float32)[None, :].expand(R, R)
    planes[2, 1] = torch.arange(R, dtype=torch.float32)[:, None].expand(R, R)
    # Texel centres of a 4-wide plane lie at (2j + 1) / 4 - 1.
    x = torch.tensor([[-0.75, 0.0, 0.25], [0.75, 0.0, -0.75]])
    feats = sample_planes(planes, x)
    assert feats.shape == (2, 3 * C)
    # feature[3c + p]: plane 0, channel 0 = column index of x (u = x).
    assert torch.allclose(feats[:, 0], torch.tensor([0.0, 3.0]))
    # plane 2 (y, z), channel 1 = row index of z (v = z) → feature index 3·1 + 2 = 5.
    assert torch.allclose(feats[:, 5], torch.tensor([2.0, 0.0]))


def test_border_padding_clamps_outside_points():
    planes = torch.randn(3, 3, 8, 8)
    inside = sample_planes(planes, torch.tensor([[0.9375, 0.9375, 0.9375]]))
    outside = sample_planes(planes, torch.tensor([[5.0, 5.0, 5.0]]))
    assert torch.allclose(inside, outside)


def test_density_is_non_negative_and_colour_saturates():
    torch.manual_seed(0)
    field = TriplaneField(FieldConfig(resolution=8, channels=4))
    pts = torch.rand(100, 3) * 2 - 1
    sigma, rgb = field(pts)
    assert (sigma >= 0).all()
    s = field.config.color_saturation
    assert (rgb >= -s).all() and (rgb <= 1 + s).all()
    assert sigma.shape == (100,) and rgb.shape == (100, 3)


def test_density_grid_corner_lattice_order():
    torch.manual_seed(0)
    field = TriplaneField(FieldConfig(resolution=8, channels=4))
    grid = density_grid(field, 5)
    assert grid.shape == (5, 5, 5)
    point = torch.tensor([[-1.0, 0.0, 0.5]])  # indices (0, 2, 3)
    assert torch.allclose(grid[0, 2, 3], field.density(point)[0], atol=1e-6)


def test_batched_planes_sample_each_scene_at_its_own_points():
    torch.manual_seed(0)
    planes = torch.randn(2, 3, 4, 8, 8)
    points = torch.rand(2, 50, 3) * 2 - 1
    feats = sample_planes(planes, points)
    assert feats.shape == (2, 50, 12)
    for b in range(2):  # the unbatched path, per scene: the same values (measured max difference 0)
        assert torch.allclose(feats[b], sample_planes(planes[b], points[b]), atol=1e-7)
    field = TriplaneField(FieldConfig(resolution=8, channels=4), planes=planes)
    sigma, rgb = field(points)
    assert sigma.shape == (2, 50) and rgb.shape == (2, 50, 3)
    assert torch.allclose(sigma[1], TriplaneField(field.config, planes[1], field.mlp_sigma, field.mlp_color)
                          .density(points[1]), atol=1e-6)


def test_given_planes_stay_in_the_graph_and_trainable_planes_copies_them():
    torch.manual_seed(0)
    source = torch.randn(3, 4, 8, 8, requires_grad=True)
    planes = source * 2  # a non-leaf, as a generator's output is
    field = TriplaneField(FieldConfig(resolution=8, channels=4), planes=planes)
    assert field.planes is planes and not any(p is planes for p in field.parameters())
    field.density(torch.zeros(5, 3)).sum().backward()
    assert source.grad is not None and float(source.grad.abs().sum()) > 0
    leaf = field.trainable_planes()
    assert leaf.is_leaf and leaf is field.planes and leaf is not planes
    assert torch.equal(leaf, planes.detach()) and leaf.data_ptr() != planes.data_ptr()
    fresh = TriplaneField(FieldConfig(resolution=8, channels=4))
    assert isinstance(fresh.planes, torch.nn.Parameter) and fresh.trainable_planes() is fresh.planes


def test_requires_grad_sets_and_restores():
    a, b = torch.zeros(2), torch.zeros(2, requires_grad=True)
    with requires_grad([a, b], False):
        assert not a.requires_grad and not b.requires_grad
    assert not a.requires_grad and b.requires_grad
    try:
        with requires_grad([a]):
            assert a.requires_grad
            raise KeyError
    except KeyError:
        pass
    assert not a.requires_grad
