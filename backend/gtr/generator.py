"""The GTR generator: posed images → triplanes (official GeneratorV3 layout and parameter names).

Image tokens come from a 16×16 patch convolution (no bias) and a LayerNorm; learned triplane tokens are prepended;
pre-norm transformer blocks (full self-attention, GEGLU feed-forward) mix them; the triplane tokens get a final
LayerNorm and a 1×1 convolution + pixel shuffle lifts them to the output triplanes. No positional embedding: the
ray channels of the input carry position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..progress import Hooks
from .config import GeneratorConfig


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, head_channels: int):
        super().__init__()
        inner = heads * head_channels
        self.heads = heads
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(width, inner, bias=False)
        self.to_v = nn.Linear(width, inner, bias=False)
        # Index 1 of the official to_out is a parameter-free dropout; keep the numbering of the weights.
        self.to_out = nn.ModuleList([nn.Linear(inner, width)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, N, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v, unmasked
        return self.to_out[0](y.transpose(1, 2).reshape(B, N, -1))


class GEGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, width: int, gated: bool):
        super().__init__()
        hidden = 4 * width
        first: nn.Module = GEGLU(width, hidden) if gated else nn.Sequential(nn.Linear(width, hidden), nn.GELU())
        # net = [projection, dropout (no parameters), output linear], numbered as in the official checkpoint.
        self.net = nn.Sequential(first, nn.Identity(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        width = config.model_channels
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, config.num_heads, config.num_head_channels)
        self.norm2 = nn.LayerNorm(width)
        self.ff = FeedForward(width, config.gated_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class Upsampler(nn.Module):
    """1×1 convolution to K·S² channels, then PixelShuffle(S)."""

    def __init__(self, width: int, out_channels: int, factor: int):
        super().__init__()
        self.proj = nn.Conv2d(width, out_channels * factor * factor, kernel_size=1)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(x), self.factor)


class Generator(nn.Module):
    """(B, V, in_channels, H, W) generator input → (B, 3, K, r·S, r·S) triplanes (planes xy, xz, yz)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        C, r = config.model_channels, config.plane_resolution
        self.planes = nn.Parameter(torch.randn(1, 3, C, r, r) * C**-0.5)
        self.conv_proj = nn.Conv2d(config.in_channels, C, kernel_size=config.patch_size, stride=config.patch_size,
                                   bias=False)
        self.norm1 = nn.LayerNorm(C) if config.img_token_normalization else nn.Identity()
        self.attn_layers = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm2 = nn.LayerNorm(C)
        self.out = Upsampler(C, config.out_channels, config.upsample_factor)
        self.gradient_checkpointing = False
        """Training: recompute each block's activations in the backward pass instead of keeping them (less memory,
        about a third more compute). Inference (no grad) is unaffected."""

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V, c, H, W) → (B, V·h·w, C), view-major then patch row then column, after ``norm1``."""
        B, V = x.shape[:2]
        t = self.conv_proj(x.flatten(0, 1))  # (B·V, C, h, w)
        t = t.flatten(2).transpose(1, 2).reshape(B, -1, t.shape[1])
        return self.norm1(t)

    def plane_tokens(self, batch: int) -> torch.Tensor:
        """(B, 3·r·r, C): plane-major, then row, then column."""
        p = self.planes.expand(batch, -1, -1, -1, -1).permute(0, 1, 3, 4, 2)
        return p.reshape(batch, -1, p.shape[-1])

    def forward(self, x: torch.Tensor, hooks: Hooks | None = None) -> torch.Tensor:
        """``hooks`` (optional) gets a progress report, and a cancel point, before each transformer block (stage
        ``generate``); the arithmetic is the same with or without them."""
        B = x.shape[0]
        r, C = self.config.plane_resolution, self.config.model_channels
        planes = self.plane_tokens(B)
        n_plane = planes.shape[1]
        tokens = torch.cat([planes, self.image_tokens(x)], dim=1)
        n_blocks = len(self.attn_layers)
        for n, block in enumerate(self.attn_layers):
            if hooks is not None:
                hooks.report("generate", n, n_blocks, f"transformer block {n + 1}/{n_blocks}")
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        if hooks is not None:
            hooks.report("generate", n_blocks, n_blocks, "triplanes")
        planes = self.norm2(tokens[:, :n_plane])
        planes = planes.view(B, 3, r, r, C).permute(0, 1, 4, 2, 3).reshape(B * 3, C, r, r)
        out = self.out(planes)
        return out.view(B, 3, *out.shape[1:])
