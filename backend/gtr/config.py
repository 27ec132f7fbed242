"""GTR settings: the generator and decoder shapes (full model, fixture's small model) and inference constants."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GeneratorConfig:
    """GeneratorV3 hyper-parameters (names follow the official config)."""

    in_channels: int = 10
    plane_resolution: int = 32
    """Side of the learned triplane token grid (r)."""
    out_channels: int = 40
    """Triplane feature channels (K)."""
    patch_size: int = 16
    model_channels: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    num_head_channels: int = 64
    upsample_factor: int = 8
    gated_ff: bool = True
    img_token_normalization: bool = True

    @property
    def triplane_resolution(self) -> int:
        return self.plane_resolution * self.upsample_factor


@dataclass(frozen=True)
class DecoderConfig:
    """Triplane decoder (SeparateField): per-plane channels, MLP depth and width, colour saturation."""

    channels: int = 40
    num_layers_sigma: int = 3
    num_layers_color: int = 4
    layer_width: int = 32
    sigmoid_saturation: float = 0.001

    @property
    def in_dim(self) -> int:
        return 3 * self.channels


@dataclass(frozen=True)
class ModelConfig:
    """A GTR model: generator + decoder, plus the settings its inference uses."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    input_size: int = 512
    """Square input image side the generator was trained on."""
    samples_per_ray: int = 256
    min_near: float = 0.2
    mesh_resolution: int = 256
    mesh_level: float = 10.0
    """Density iso-level of the extracted surface."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        gen = GeneratorConfig(**data.pop("generator", {}))
        dec = DecoderConfig(**data.pop("decoder", {}))
        return cls(generator=gen, decoder=dec, **data)


FULL = ModelConfig()
"""The released model: 24 blocks of width 1024, 40-channel 256² triplanes (411 M generator parameters)."""

SMALL = ModelConfig(
    generator=GeneratorConfig(
        plane_resolution=4, out_channels=8, model_channels=64, num_layers=2, num_heads=2, num_head_channels=32
    ),
    decoder=DecoderConfig(channels=8),
    mesh_resolution=32,
    mesh_level=0.74,
)
"""The parity fixture's model: every code path of the full one, tiny sizes (its mesh level suits random weights)."""


@dataclass(frozen=True)
class RefineSettings:
    """The official texture refinement (``refine_texture``) and its optimiser."""

    iterations: int = 50
    raster_size: int = 1024
    """Rasterisation side in the input views; the prediction is resized to the input size for the loss."""
    code_lr: float = 0.15
    """Learning rate of the triplane (constant)."""
    lr: float = 1e-4
    """Peak learning rate of the colour MLP (cosine schedule below)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    """Total-norm clip on the colour-MLP gradients (the triplane's are not clipped)."""
    warm_up_end: int = 1
    schedule_alpha: float = 0.05
    schedule_steps: int = 500

    def mlp_lr(self, step: int) -> float:
        """Colour-MLP learning rate at scheduler step ``step`` (0-based): zero during warm-up, then cosine decay
        from ``lr`` to ``schedule_alpha · lr`` over ``schedule_steps``."""
        if step < self.warm_up_end:
            factor = step / self.warm_up_end
        else:
            progress = (step - self.warm_up_end) / (self.schedule_steps - self.warm_up_end)
            factor = self.schedule_alpha + (1 - self.schedule_alpha) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * factor
