"""Triplane radiance field (GTR's decoder): three axis-aligned feature planes, a density MLP and a colour MLP.

Planes (GTR order): plane 0 is sampled at (x, y), plane 1 at (x, z), plane 2 at (y, z), with
``grid_sample(bilinear, padding_mode='border', align_corners=False)``; u addresses columns, v rows. Features are
concatenated in GTR's *interleaved* order: ``feature[3·c + p]`` = plane p, channel c. Coordinates are the
canonical frame, where the object lies inside [-1, 1]³.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .progress import Hooks
    from .volume import OccupancyGrid


@dataclass(frozen=True)
class FieldConfig:
    resolution: int = 256
    """Side of each feature plane in texels."""
    channels: int = 12
    """Feature channels per plane (GTR: 40)."""
    width: int = 32
    """Hidden width of both MLPs (GTR: 32)."""
    sigma_layers: int = 3
    """Linear layers in the density MLP (GTR: 3)."""
    color_layers: int = 4
    """Linear layers in the colour MLP (GTR: 4)."""
    color_saturation: float = 0.001
    """rgb = sigmoid(z)·(1 + 2s) − s (GTR: 0.001)."""
    init_std: float = 0.1
    """Std-dev of the initial plane features (only for a fresh, trainable triplane)."""
    density_scale: float = 1.0
    """σ = density_scale · softplus(z) (GTR: 1). Larger values let a fresh fit reach opaque surfaces quickly."""


class MLP(nn.Module):
    """``layers`` linear layers with GELU (erf) between them; parameters are named ``layers.{i}`` as in GTR."""

    def __init__(self, in_dim: int, width: int, out_dim: int, layers: int):
        super().__init__()
        dims = [in_dim] + [width] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList([nn.Linear(dims[k], dims[k + 1]) for k in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.gelu(layer(x))
        return self.layers[-1](x)


def sample_planes(planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear features at canonical points.

    planes: (3, C, R, R); points: (P, 3) → (P, 3·C) interleaved (feature[3c + p]).
    Batched: planes (B, 3, C, R, R); points (B, P, 3) → (B, P, 3·C), scene b sampled at its own points.
    """
    if planes.dim() == 5:
        B, _, C, H, W = planes.shape
        if points.dim() != 3 or points.shape[0] != B:
            raise ValueError(f"batched planes {tuple(planes.shape)} need points (B={B}, P, 3), "
                             f"got {tuple(points.shape)}")
        coords = torch.stack([points[..., [0, 1]], points[..., [0, 2]], points[..., [1, 2]]], dim=1)  # (B, 3, P, 2)
        feats = F.grid_sample(
            planes.reshape(B * 3, C, H, W), coords.reshape(B * 3, -1, 1, 2), mode="bilinear",
            padding_mode="border", align_corners=False,
        )  # (B·3, C, P, 1)
        feats = feats.view(B, 3, C, -1).permute(0, 3, 2, 1)  # (B, P, C, 3)
        return feats.reshape(B, points.shape[1], -1)
    coords = torch.stack([points[:, [0, 1]], points[:, [0, 2]], points[:, [1, 2]]])  # (3, P, 2) = (u, v)
    feats = F.grid_sample(
        planes, coords.unsqueeze(2), mode="bilinear", padding_mode="border", align_corners=False
    )  # (3, C, P, 1)
    feats = feats.squeeze(-1).permute(2, 1, 0)  # (P, C, 3)
    return feats.reshape(points.shape[0], -1)


class TriplaneField(nn.Module):
    """Triplane + separate density and colour MLPs (given MLPs are shared, e.g. a GTR checkpoint's).

    A fresh triplane (``planes=None``) is a trainable ``nn.Parameter``, and so is a given ``nn.Parameter``. Other
    given planes (e.g. a generator's output) are kept as they are, a non-persistent buffer that stays in the
    autograd graph, so a loss on the field's outputs reaches whatever produced them; :meth:`trainable_planes` makes
    a detached leaf copy for per-object optimisation. Planes may be batched, (B, 3, C, R, R), with points
    (B, P, 3) (see :func:`sample_planes`).

    ``density_prior`` is an optional (D, D, D) grid of pre-activation offsets over [-1, 1]³ (indexed [x, y, z]);
    the no-weights fit seeds it from the visual hull so optimisation starts near the right shape and space
    outside the hull stays empty.
    """

    def __init__(
        self,
        config: FieldConfig,
        planes: torch.Tensor | None = None,
        mlp_sigma: MLP | None = None,
        mlp_color: MLP | None = None,
    ):
        super().__init__()
        self.config = config
        if planes is None:
            self.planes = nn.Parameter(
                torch.randn(3, config.channels, config.resolution, config.resolution) * config.init_std
            )
        elif isinstance(planes, nn.Parameter):
            self.planes = planes
        else:
            self.register_buffer("planes", planes, persistent=False)
        in_dim = 3 * self.planes.shape[-3]
        self.mlp_sigma = mlp_sigma or MLP(in_dim, config.width, 1, config.sigma_layers)
        self.mlp_color = mlp_color or MLP(in_dim, config.width, 3, config.color_layers)
        self.register_buffer("density_prior", None, persistent=False)

    def trainable_planes(self) -> torch.Tensor:
        """The triplane as a leaf tensor an optimiser can update in place.

        A parameter triplane (fresh, or given as one) already is. Other given planes are replaced by a detached
        copy, which deliberately cuts the graph to whatever produced them (per-object refinement must not write into, or
        backpropagate to, the generator's output). ``requires_grad`` is left as it is: the caller sets it.
        """
        if not isinstance(self.planes, nn.Parameter):
            self.planes = self.planes.detach().clone()
        return self.planes

    def set_density_prior(self, prior: torch.Tensor | None) -> None:
        self.density_prior = prior

    def _prior_at(self, points: torch.Tensor) -> torch.Tensor:
        # grid_sample on a 3D volume takes (x, y, z) → (W, H, D) axes; the prior is stored [x, y, z] → permute.
        grid = self.density_prior.permute(2, 1, 0)[None, None]
        p = F.grid_sample(grid, points.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=True)
        return p.view(points.shape[:-1])

    def features(self, points: torch.Tensor) -> torch.Tensor:
        return sample_planes(self.planes, points)

    def density_from_features(self, feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        z = self.mlp_sigma(feats).squeeze(-1)
        if self.density_prior is not None:
            z = z + self._prior_at(points)
        return F.softplus(z) * self.config.density_scale

    def color_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        s = self.config.color_saturation
        return torch.sigmoid(self.mlp_color(feats)) * (1 + 2 * s) - s

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """(P, 3) → (P,) σ ≥ 0 (batched: (B, P, 3) → (B, P))."""
        return self.density_from_features(self.features(points), points)

    def color(self, points: torch.Tensor) -> torch.Tensor:
        """(P, 3) → (P, 3) sRGB (approximately [0, 1]) (batched: (B, P, 3) → (B, P, 3))."""
        return self.color_from_features(self.features(points))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(points)
        return self.density_from_features(feats, points), self.color_from_features(feats)


def grid_points(resolution: int, device=None) -> torch.Tensor:
    """(N³, 3) lattice points over [-1, 1]³ with corners on the box, 'ij' indexing (x slowest), computed as the
    official release does: linspace(0, 1, N)·2 − 1 per axis."""
    g = torch.linspace(0, 1, resolution, device=device) * 2 - 1
    return torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)


def density_grid(
    field: TriplaneField,
    resolution: int,
    *,
    occupancy: OccupancyGrid | None = None,
    chunk: int = 1 << 20,
    grad: bool = False,
    hooks: Hooks | None = None,
) -> torch.Tensor:
    """σ at :func:`grid_points`, shaped (N, N, N) and indexed [ix, iy, iz]; a batched field gives (B, N, N, N).

    ``occupancy``: evaluate only near its occupied cells (σ = 0 elsewhere; unbatched fields only). ``grad``: keep
    the autograd graph (training through marching cubes); by default none is built. ``hooks``: a progress report
    (stage ``extract``) and cancel point before each chunk.
    """
    from .progress import Hooks

    hooks = hooks or Hooks()
    pts = grid_points(resolution, field.planes.device)
    batched = field.planes.dim() == 5
    if batched and occupancy is not None:
        raise ValueError("density_grid: occupancy applies to an unbatched field only")
    if occupancy is None:
        index = None
        parts = pts.split(chunk) if not batched else pts.expand(field.planes.shape[0], -1, -1).split(chunk, dim=1)
    else:
        index = occupancy.dilated(1).lookup(pts).nonzero().squeeze(1)
        parts = index.split(chunk)
    values = []
    with torch.set_grad_enabled(grad):
        for n, part in enumerate(parts):
            hooks.report("extract", n, len(parts), f"density grid {resolution}³")
            values.append(field.density(part if index is None else pts[part]))
        if index is None:
            sigma = torch.cat(values, dim=1 if batched else 0)
        else:
            sigma = pts.new_zeros(pts.shape[0])
            if values:
                sigma = sigma.index_put((index,), torch.cat(values))
    shape = (resolution,) * 3
    return sigma.view(field.planes.shape[0], *shape) if batched else sigma.view(shape)


@contextmanager
def requires_grad(tensors: Iterable[torch.Tensor], enabled: bool = True) -> Iterator[None]:
    """Set ``requires_grad`` on leaf ``tensors`` for the block; each one's previous state is restored afterwards."""
    tensors = list(tensors)
    before = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(enabled)
        yield
    finally:
        for t, state in zip(tensors, before):
            t.requires_grad_(state)
