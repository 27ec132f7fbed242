"""Gradients reach the GTR generator through the field: volume-rendered pixels and marching-cubes vertices.

Training needs the generator's triplanes to stay in the autograd graph when a field is built over them
(``GTRField.on``), unbatched and batched. A tiny random generator (the parity fixture's SMALL sizes) on CPU.
"""

from __future__ import annotations

import pytest
import torch

from backend.field import density_grid
from backend.gtr.config import SMALL
from backend.gtr.decoder import GTRField
from backend.gtr.generator import Generator
from backend.gtr.geometry import extract_mesh
from backend.volume import render_rays_dense

WATCHED = ("conv_proj.weight", "attn_layers.0.self_attn.to_q.weight", "attn_layers.1.ff.net.2.weight")
"""Generator parameters whose gradients are checked: the patch embedding, and attention / feed-forward weights."""


@pytest.fixture()
def model() -> tuple[Generator, GTRField, torch.Tensor]:
    torch.manual_seed(0)
    generator, field = Generator(SMALL.generator), GTRField(SMALL.decoder)
    x = torch.randn(2, 2, SMALL.generator.in_channels, 32, 32)  # B = 2 scenes of 2 views, 32² (2×2 patches)
    return generator, field, x


def _rays(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from z = 3 towards the box, fanned out a little so they see different texels."""
    torch.manual_seed(1)
    target = torch.rand(n, 3) * 1.2 - 0.6
    origins = torch.tensor([0.2, -0.1, 3.0]).expand(n, 3)
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    return origins, dirs


def _assert_generator_gradients(generator: Generator) -> None:
    params = dict(generator.named_parameters())
    for name in WATCHED:
        grad = params[name].grad
        assert grad is not None, f"no gradient reached {name}"
        assert bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().max()) > 0, f"zero gradient on {name}"


def test_rendered_pixels_reach_the_generator(model):
    generator, field, x = model
    triplanes = generator(x[:1])[0]  # (3, K, R, R)
    origins, dirs = _rays()
    out = render_rays_dense(field.on(triplanes), origins, dirs, samples=32)
    out.rgb.mean().backward()
    _assert_generator_gradients(generator)


def test_rendered_pixels_reach_the_generator_batched(model):
    generator, field, x = model
    triplanes = generator(x)  # (2, 3, K, R, R)
    origins, dirs = _rays()
    batch_origins = torch.stack([origins, origins.flip(0)])
    batch_dirs = torch.stack([dirs, dirs.flip(0)])
    out = render_rays_dense(field.on(triplanes), batch_origins, batch_dirs, samples=32)
    assert out.rgb.shape == (2, 24, 3) and out.weights.shape == (2, 24, 32)
    # Each scene renders as it does alone (same arithmetic per element; measured max difference 0).
    for b in range(2):
        alone = render_rays_dense(field.on(triplanes[b]), batch_origins[b], batch_dirs[b], samples=32)
        assert torch.allclose(out.rgb[b], alone.rgb, atol=1e-6)
        assert torch.allclose(out.depth_median()[b], alone.depth_median(), atol=1e-6)
    out.rgb[1].mean().backward()  # a loss on the second scene only
    _assert_generator_gradients(generator)


def _vertex_loss(grid: torch.Tensor) -> torch.Tensor:
    level = float(torch.quantile(grid.detach().flatten(), 0.9))  # random weights: a level the density crosses
    verts, faces = extract_mesh(grid, level)
    assert faces.shape[0] > 50
    return verts.square().sum(-1).mean()


def test_marching_cubes_vertices_reach_the_generator(model):
    generator, field, x = model
    triplanes = generator(x[:1])[0]
    grid = density_grid(field.on(triplanes), 16, grad=True)
    assert grid.requires_grad
    _vertex_loss(grid).backward()
    _assert_generator_gradients(generator)


def test_marching_cubes_vertices_reach_the_generator_batched(model):
    generator, field, x = model
    triplanes = generator(x)
    grid = density_grid(field.on(triplanes), 16, grad=True)
    assert grid.shape == (2, 16, 16, 16)
    with torch.no_grad():
        alone = density_grid(field.on(triplanes[1]), 16)
    assert torch.allclose(grid[1], alone, atol=1e-6)  # measured max difference 0
    sum(_vertex_loss(g) for g in grid).backward()
    _assert_generator_gradients(generator)


def test_density_grid_builds_no_graph_by_default(model):
    generator, field, x = model
    grid = density_grid(field.on(generator(x[:1])[0]), 8)
    assert not grid.requires_grad
