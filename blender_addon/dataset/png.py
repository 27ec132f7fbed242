"""PNG files with the standard library and numpy: 16-bit grey and RGB for depth and normal maps.

Blender's own image writer runs pixels through colour management; depth and normals must reach the file as exact
integers, so they are encoded here. Only what the dataset needs: 8- or 16-bit, grey / RGB / RGBA, no interlacing,
no palette. The writer picks a filter per row (the smallest sum of absolute filtered bytes, the heuristic the PNG
specification suggests).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 3: 2, 4: 6}
"""Channels → PNG colour type (grey, RGB, RGBA)."""


def encode_png(pixels: np.ndarray) -> bytes:
    """The PNG bytes of ``pixels``: (H, W) or (H, W, C) with C in 1, 3, 4, dtype uint8 or uint16, top row first."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"pixels must be (H, W) or (H, W, 1|3|4), got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    height, width, channels = pixels.shape
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least one pixel, got {width}×{height}")
    bit_depth = 8 * pixels.dtype.itemsize
    raw = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).view(np.uint8)
    raw = raw.reshape(height, width * channels * pixels.dtype.itemsize)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, COLOUR_TYPES[channels], 0, 0, 0)
    data = zlib.compress(_filter_rows(raw, channels * pixels.dtype.itemsize).tobytes(), 9)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` (see :func:`encode_png`) to ``path`` atomically: a temporary name beside it, then a rename."""
    write_atomic(path, encode_png(pixels))


def write_atomic(path: str | Path, data: bytes) -> None:
    """``data`` into ``path`` through ``path.<pid>.tmp`` and a rename, so ``path`` is never seen half-written."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _filter_rows(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Each row of ``raw`` (H, row bytes) filtered with the type giving the smallest sum of |signed bytes|,
    prefixed by its filter type byte."""
    current = raw.astype(np.int16)
    left = np.zeros_like(current)
    left[:, bpp:] = current[:, :-bpp]
    up = np.zeros_like(current)
    up[1:] = current[:-1]
    up_left = np.zeros_like(current)
    up_left[1:, bpp:] = current[:-1, :-bpp]
    estimate = left + up - up_left
    distance_left, distance_up, distance_up_left = (np.abs(estimate - x) for x in (left, up, up_left))
    paeth = np.where(
        (distance_left <= distance_up) & (distance_left <= distance_up_left),
        left,
        np.where(distance_up <= distance_up_left, up, up_left),
    )
    candidates = np.stack([current, current - left, current - up, current - (left + up) // 2, current - paeth])
    candidates = (candidates & 0xFF).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, H)
    choice = cost.argmin(axis=0)
    filtered = candidates[choice, np.arange(raw.shape[0])]
    return np.concatenate([choice.astype(np.uint8)[:, None], filtered], axis=1)
