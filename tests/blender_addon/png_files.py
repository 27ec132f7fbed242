"""Reading the dataset's PNGs in tests with OpenCV's decoder (libpng), independent of the add-on's writer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_png(path: str | Path) -> np.ndarray:
    """(H, W, C) uint8 or uint16 pixels as stored (C = 1, 3 or 4, RGB order), top row first."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path} is not a readable PNG file")
    if image.ndim == 2:
        return image[:, :, None]
    order = [2, 1, 0, 3][: image.shape[2]]  # OpenCV stores BGR(A)
    return np.ascontiguousarray(image[:, :, order])
