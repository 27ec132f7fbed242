"""EXIF orientation: turning a photo's pixels upright, and its camera with them.

The EXIF Orientation tag (0x0112) says how the stored pixels must be turned for display: 1 upright, 2 mirrored
left-right, 3 turned 180°, 4 mirrored top-bottom, 5 transposed, 6 turned 90° clockwise, 7 transversed, 8 turned
90° counter-clockwise (the same as Pillow's ``ImageOps.exif_transpose``). Each is a map of pixel coordinates
(corner convention) from the stored W × H grid to the upright one: upright = A · stored + b.

Turning the pixels of a pinhole view by a rotation (3, 6, 8) is the same as turning its camera about the optical
axis: :func:`upright_camera` gives that camera, so the same rays meet the same colours. A mirrored photo (2, 4, 5,
7) is no camera's view of the scene (a camera cannot see a mirror image), so its camera cannot follow it.
"""

from __future__ import annotations

import numpy as np

from ..cameras import Camera

ROTATIONS = (3, 6, 8)
MIRRORS = (2, 4, 5, 7)
TRANSPOSED = (5, 6, 7, 8)
"""Tags whose upright image is H × W for a stored W × H."""


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the upright image for a stored ``width`` × ``height``."""
    return (height, width) if orientation in TRANSPOSED else (width, height)


def pixel_map(width: int, height: int, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """(A (2, 2), b (2,)): stored pixel coordinates p → upright A·p + b, for a stored ``width`` × ``height``."""
    W, H = float(width), float(height)
    table = {
        1: ([[1, 0], [0, 1]], [0, 0]),
        2: ([[-1, 0], [0, 1]], [W, 0]),
        3: ([[-1, 0], [0, -1]], [W, H]),
        4: ([[1, 0], [0, -1]], [0, H]),
        5: ([[0, 1], [1, 0]], [0, 0]),
        6: ([[0, -1], [1, 0]], [H, 0]),
        7: ([[0, -1], [-1, 0]], [H, W]),
        8: ([[0, 1], [-1, 0]], [0, W]),
    }
    A, b = table[orientation]
    return np.array(A, dtype=np.float64), np.array(b, dtype=np.float64)


def upright_array(array: np.ndarray | None, orientation: int) -> np.ndarray | None:
    """A stored (H, W, ...) array turned upright (as Pillow's ``exif_transpose`` turns the image); None stays."""
    if array is None or orientation == 1:
        return array
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, -1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](array)
    return np.ascontiguousarray(turned)


def upright_camera(camera: Camera, orientation: int) -> Camera:
    """The camera that sees the upright pixels of a photo whose stored pixels ``camera`` sees.

    Only rotations (3, 6, 8) have one: the camera turns about its optical axis (world_to_camera gains the turn,
    K's focal lengths swap for 90° turns and the principal point moves with the pixels). Raises ValueError for
    mirrors.
    """
    if orientation == 1:
        return camera
    if orientation not in ROTATIONS:
        raise ValueError(f"EXIF orientation {orientation} mirrors the image: no camera sees it")
    A, b = pixel_map(camera.width, camera.height, orientation)
    K = camera.K.copy()
    K[:2, :2] = A @ camera.K[:2, :2] @ A.T
    K[:2, 2] = A @ camera.K[:2, 2] + b
    turn = np.eye(4)
    turn[:2, :2] = A
    width, height = upright_size(camera.width, camera.height, orientation)
    return Camera(turn @ camera.world_to_camera, K, width, height, camera.orthographic)
