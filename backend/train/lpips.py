"""LPIPS (VGG16 variant) as a training loss, from a local weights file; nothing is ever downloaded.

The network: images in [0, 1] → [-1, 1] → shift/scale per channel → VGG16's convolutions, tapped after relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3 → each feature map normalised to unit length per pixel → squared
difference → a 1×1 convolution with one output (the learned weights) → mean over pixels → sum over the taps.

The weights file is the state dict of the ``lpips`` package's ``LPIPS(net="vgg")`` module (for example written
once with ``torch.save(lpips.LPIPS(net="vgg").state_dict(), "lpips_vgg.pth")`` where that package and its weights
are available), as a torch file (read with ``weights_only=True``) or a ``.safetensors`` file. Its keys:
``scaling_layer.shift``/``scale``, ``net.slice{1-5}.{i}.weight``/``bias`` (``i`` the layer's index in
torchvision's ``vgg16().features``) and ``lin{0-4}.model.1.weight``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

VGG16_FEATURES = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
"""torchvision's VGG16 convolution stack up to relu5_3: channels of each 3×3 convolution (each followed by a ReLU)
and "M" for a 2×2 max-pool."""
TAPS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
"""The five slices of ``features`` (start, end layer index), each ending after relu1_2 … relu5_3."""
TAP_CHANNELS = (64, 128, 256, 512, 512)


def _vgg_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_FEATURES:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return layers


class _Slices(nn.Module):
    def __init__(self):
        super().__init__()
        layers = _vgg_layers()
        for k, (start, end) in enumerate(TAPS, 1):
            part = nn.Sequential()
            for i in range(start, end):
                part.add_module(str(i), layers[i])
            setattr(self, f"slice{k}", part)


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))  # [dropout, 1×1 conv]


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])


class LPIPS(nn.Module):
    """Perceptual distance of image batches (N, 3, H, W) in [0, 1] → (N,). Its parameters never train."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _Slices()
        for k, channels in enumerate(TAP_CHANNELS):
            setattr(self, f"lin{k}", _Lin(channels))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.scaling_layer
        fx, fy = (x * 2 - 1 - s.shift) / s.scale, (y * 2 - 1 - s.shift) / s.scale
        total = x.new_zeros(x.shape[0])
        for k in range(len(TAPS)):
            part = getattr(self.net, f"slice{k + 1}")
            fx, fy = part(fx), part(fy)
            diff = (_unit(fx) - _unit(fy)).square()
            total = total + getattr(self, f"lin{k}").model(diff).mean(dim=(1, 2, 3))
        return total


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).add(eps).sqrt() + eps)


def load_lpips(path: str | Path, device: torch.device | str = "cpu") -> LPIPS:
    """The network with the weights of ``path`` (every key must be there, with its shape)."""
    path = Path(path)
    fix = ("give the state dict of lpips.LPIPS(net='vgg') saved with torch.save (or as .safetensors); see "
           "backend/train/lpips.py.")
    if not path.is_file():
        raise InputError(f"LPIPS weights {path} do not exist", fix=fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not weights-only: either way not usable
        raise InputError(f"cannot read LPIPS weights {path} ({exc})", fix=fix) from None
    state = {k: v for k, v in state.items() if not k.startswith("lins.")}  # newer lpips: aliases of lin0-4
    model = LPIPS()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{path} is not an LPIPS (VGG) state dict: {str(exc)[:300]}", fix=fix) from None
    return model.to(device).eval()
