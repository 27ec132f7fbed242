"""The GTR field (BaseNeRF + TriplaneDecoder + SeparateField) with the official parameter names.

State-dict keys: ``aabb`` and ``decoder.field.mlp_sigma.layers.{i}`` / ``decoder.field.mlp_color.layers.{i}``.
Only the parameters live here; sampling and activations are :class:`backend.field.TriplaneField`'s, which takes
these MLPs and a triplane (the generator's output, or a trainable copy of it during refinement).
"""

from __future__ import annotations

import torch
from torch import nn

from ..field import MLP, FieldConfig, TriplaneField
from .config import DecoderConfig


class SeparateField(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.mlp_sigma = MLP(config.in_dim, config.layer_width, 1, config.num_layers_sigma)
        self.mlp_color = MLP(config.in_dim, config.layer_width, 3, config.num_layers_color)


class TriplaneDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.field = SeparateField(config)


class GTRField(nn.Module):
    """Holds the decoder MLPs and the scene box; :meth:`on` binds them to a triplane."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.register_buffer("aabb", torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
        self.decoder = TriplaneDecoder(config)

    def field_config(self, resolution: int) -> FieldConfig:
        c = self.config
        return FieldConfig(
            resolution=resolution,
            channels=c.channels,
            width=c.layer_width,
            sigma_layers=c.num_layers_sigma,
            color_layers=c.num_layers_color,
            color_saturation=c.sigmoid_saturation,
        )

    def on(self, planes: torch.Tensor) -> TriplaneField:
        """A TriplaneField over ``planes`` (3, K, R, R), or a batch (B, 3, K, R, R), that shares (not copies) this
        field's MLPs. The planes are used as given, so gradients flow back to whatever produced them."""
        mlps = self.decoder.field
        return TriplaneField(self.field_config(planes.shape[-1]), planes=planes, mlp_sigma=mlps.mlp_sigma,
                             mlp_color=mlps.mlp_color)
