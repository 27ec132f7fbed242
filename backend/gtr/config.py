"""GTR settings: the generator and decoder shapes (full model, fixture's small model) and inference constants."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GeneratorConfig:
    """GeneratorV3 hyper-parameters (names follow the official config)."""

    in_channels: int = 10
    """Input channels per pixel: RGB, ray direction, ray moment d × o, alpha (10)."""
    plane_resolution: int = 32
    """Side of the learned triplane token grid (r)."""
    out_channels: int = 40
    """Triplane feature channels (K)."""
    patch_size: int = 16
    """Side of the square image patches that become tokens."""
    model_channels: int = 1024
    """Transformer width."""
    num_layers: int = 24
    """Transformer blocks."""
    num_heads: int = 16
    """Attention heads per block."""
    num_head_channels: int = 64
    """Channels per attention head."""
    upsample_factor: int = 8
    """Pixel-shuffle factor from the token grid to the triplane (r · factor = triplane side)."""
    gated_ff: bool = True
    """GEGLU feed-forward (True) or plain GELU MLP (False)."""
    img_token_normalization: bool = True
    """LayerNorm on the image tokens after the patch convolution."""

    @property
    def triplane_resolution(self) -> int:
        return self.plane_resolution * self.upsample_factor


@dataclass(frozen=True)
class DecoderConfig:
    """Triplane decoder (SeparateField): per-plane channels, MLP depth and width, colour saturation."""

    channels: int = 40
    """Feature channels per plane (the triplane's K)."""
    num_layers_sigma: int = 3
    """Linear layers of the density MLP."""
    num_layers_color: int = 4
    """Linear layers of the colour MLP."""
    layer_width: int = 32
    """Hidden width of both MLPs."""
    sigmoid_saturation: float = 0.001
    """Colour range stretch s: rgb = sigmoid(z)·(1 + 2s) − s."""

    @property
    def in_dim(self) -> int:
        return 3 * self.channels


@dataclass(frozen=True)
class ModelConfig:
    """A GTR model: generator + decoder, plus the settings its inference uses."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The image-to-triplane transformer."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The triplane decoder (density and colour MLPs)."""
    input_size: int = 512
    """Square input image side the generator was trained on."""
    samples_per_ray: int = 256
    """Volume-rendering samples per ray (official renderer)."""
    min_near: float = 0.2
    """Nearest sample distance along a ray, canonical units."""
    mesh_resolution: int = 256
    """Marching-cubes grid side of the released recipe."""
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
