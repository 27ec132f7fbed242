"""The float32 precision policy of the ``gtr`` method on CUDA (TF32), applied in one place.

On Ampere and newer GPUs, torch may run float32 matrix products and convolutions in TF32 (10-bit mantissa,
relative rounding 2⁻¹¹ ≈ 4.9e-4 per product instead of float32's 6e-8). Its defaults differ by operation:
``torch.backends.cuda.matmul.allow_tf32`` is False while ``torch.backends.cudnn.allow_tf32`` is True, so the
generator's convolutions would use TF32 and its attention and linear layers would not. :func:`float32_precision`
sets both flags for a block and restores them afterwards. CPU computation ignores both flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Precision = Literal["highest", "tf32"]
PRECISIONS: tuple[str, ...] = ("highest", "tf32")


@contextmanager
def float32_precision(precision: Precision) -> Iterator[None]:
    """Within the block, float32 matmuls and cuDNN convolutions run in full float32 (``"highest"``: TF32 off)
    or may use TF32 (``"tf32"``); the previous flags are restored on exit, also after an exception."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    allow = precision == "tf32"
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
