"""The sRGB transfer functions (IEC 61966-2-1), for numpy arrays and torch tensors alike.

Values are clipped to [0, 1] first. numpy input is computed in float64; a tensor keeps its dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def srgb_to_linear(c: Any) -> Any:
    """sRGB-encoded values → linear light."""
    if isinstance(c, np.ndarray) or not hasattr(c, "clamp"):
        c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    import torch

    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: Any) -> Any:
    """Linear light → sRGB-encoded values."""
    if isinstance(c, np.ndarray) or not hasattr(c, "clamp"):
        c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
        return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.maximum(c, 1e-12) ** (1 / 2.4) - 0.055)
    import torch

    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
