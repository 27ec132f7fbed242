"""Lens distortion: OpenCV's radial-tangential and fisheye models, and resampling a photo into a pinhole view.

Both models act on normalised camera coordinates (x, y) = (X/Z, Y/Z) (OpenCV axes); the distorted point
(x_d, y_d) lands on pixel (fx·x_d + cx, fy·y_d + cy). The formulas are OpenCV's (and COLMAP's, which uses the
same ones); a shift of the pixel origin changes cx, cy and the pixels alike, so they hold in this project's
pixel-corner convention as they are.

- ``"opencv"`` (radial-tangential: COLMAP SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV; nerfstudio / instant-ngp
  k1 k2 k3 p1 p2): with r² = x² + y²,
  radial = (1 + k1 r² + k2 r⁴ + k3 r⁶) / (1 + k4 r² + k5 r⁴ + k6 r⁶),
  x_d = x·radial + 2 p1 x y + p2 (r² + 2 x²), y_d = y·radial + p1 (r² + 2 y²) + 2 p2 x y.
- ``"fisheye"`` (equidistant: COLMAP OPENCV_FISHEYE, ``cv2.fisheye``): θ = atan(r),
  θ_d = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸), (x_d, y_d) = (θ_d / r)·(x, y).

:func:`undistort_pixels` resamples a photo into a pinhole camera of the same size and principal point whose
focal lengths are the photo's times one factor s (:func:`undistorted_K`): s = 1 when every pixel of that camera
sees into the photo (barrel distortion, fisheye lenses: the outer rim of the photo is cropped, the centre keeps
its resolution), else the smallest s up to 2 for which they all do (pincushion distortion: the view zooms in
until no pixel is blank). Pixels that still map outside the photo, or past the radius where the lens model folds
back (its radial map stops growing), get mask 0 and are counted in :attr:`Undistorted.outside`. Colour and mask
are sampled bilinearly, depth by nearest neighbour (camera-z depth is the same along a ray, so it carries over).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .images import Pixels

MODELS = ("opencv", "fisheye")
MAX_ZOOM = 2.0
"""The largest focal-length factor :func:`undistorted_K` uses to keep blank pixels out of the view."""
MAX_RADIUS = 50.0
"""Rays farther off-axis than this (normalised radius; 88.9°) count as unseen."""
_CHUNK = 1 << 20  # output pixels resampled at once


@dataclass(frozen=True)
class Distortion:
    """A lens distortion model and its coefficients (see the module docstring).

    ``model``: ``"opencv"`` or ``"fisheye"``. ``k``: radial coefficients, k1 first (opencv: up to k1..k6, fisheye:
    up to k1..k4; missing ones are 0). ``p``: tangential (p1, p2), opencv only.
    """

    model: str = "opencv"
    k: tuple[float, ...] = ()
    p: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown distortion model {self.model!r}")
        limit = 6 if self.model == "opencv" else 4
        if len(self.k) > limit or (self.model == "fisheye" and any(self.p)):
            raise ValueError(f"{self.model} distortion takes at most k1..k{limit} and no p for fisheye")
        object.__setattr__(self, "k", tuple(float(v) for v in self.k) + (0.0,) * (limit - len(self.k)))
        object.__setattr__(self, "p", (float(self.p[0]), float(self.p[1])))

    @property
    def is_identity(self) -> bool:
        """True for a pinhole lens: opencv with every coefficient 0 (fisheye is never the identity)."""
        return self.model == "opencv" and not any(self.k) and not any(self.p)

    def opencv_coefficients(self) -> np.ndarray:
        """OpenCV's ``distCoeffs``: (k1, k2, p1, p2, k3, k4, k5, k6), or (k1, k2, k3, k4) for fisheye."""
        if self.model == "fisheye":
            return np.array(self.k, dtype=np.float64)
        k = self.k
        return np.array([k[0], k[1], *self.p, k[2], k[3], k[4], k[5]], dtype=np.float64)


def distort(distortion: Distortion, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised undistorted (x, y) → distorted (x_d, y_d), element-wise, float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    r2 = x * x + y * y
    if distortion.model == "fisheye":
        r = np.sqrt(r2)
        theta = np.arctan(r)
        t2 = theta * theta
        k1, k2, k3, k4 = distortion.k
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(r > 1e-12, theta_d / r, 1.0)
        return x * scale, y * scale
    radial = _radial(distortion, r2)
    p1, p2 = distortion.p
    xy = x * y
    return x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy


def _radial(distortion: Distortion, r2: np.ndarray) -> np.ndarray:
    k1, k2, k3, k4, k5, k6 = distortion.k
    return (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))


@functools.lru_cache(maxsize=64)
def fold_radius(distortion: Distortion) -> float:
    """The undistorted radius r (normalised) past which the model's radial map stops growing, at most
    :data:`MAX_RADIUS`.

    Past it the model folds back and maps rays far off-axis onto pixels nearer the centre; no lens does that, so
    those rays count as unseen. Found on a grid, then refined by bisection (tangential terms left out).
    """

    def grows(r: np.ndarray) -> np.ndarray:
        step = 1e-7 * np.maximum(r, 1.0)
        return _radius(distortion, r + step) > _radius(distortion, r - step)

    r = np.linspace(0.0, MAX_RADIUS, 20001)[1:]
    bad = np.flatnonzero(~grows(r))
    if not bad.size:
        return MAX_RADIUS
    low, high = (r[bad[0] - 1] if bad[0] else 0.0), r[bad[0]]
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if grows(np.array([middle]))[0] else (low, middle)
    return float(low)


def _radius(distortion: Distortion, r: np.ndarray) -> np.ndarray:
    """The distorted radius of an undistorted radius ``r`` (no tangential terms)."""
    if distortion.model == "fisheye":
        return np.hypot(*distort(distortion, r, np.zeros_like(r)))
    return r * _radial(distortion, r * r)


def source_pixels(K: np.ndarray, distortion: Distortion, new_K: np.ndarray, u, v) -> np.ndarray:
    """Where points (``u``, ``v``) of the pinhole camera ``new_K`` land in the distorted photo (intrinsics ``K``).

    ``u``, ``v``: pixel coordinates in the corner convention (pixel centres at i + 0.5), any matching shapes.
    Returns (..., 2) float64 photo pixel coordinates, NaN for rays past :func:`fold_radius`.
    """
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    y = (v - new_K[1, 2]) / new_K[1, 1]
    x = (u - new_K[0, 2] - new_K[0, 1] * y) / new_K[0, 0]
    xd, yd = distort(distortion, x, y)
    pixels = np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=-1)
    pixels[np.hypot(x, y) > fold_radius(distortion)] = np.nan
    return pixels


def _inside(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        u, v = pixels[..., 0], pixels[..., 1]
        return (u >= 0) & (u <= width) & (v >= 0) & (v <= height)


def _all_inside(K: np.ndarray, distortion: Distortion, new_K: np.ndarray, width: int, height: int) -> bool:
    """Whether every pixel centre on the output's outer ring maps inside the photo (the ring bounds the rest: the
    models map straight out from the principal point, and the fold radius is reached first on the ring)."""
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    u = np.concatenate([cols, cols, np.full(height, 0.5), np.full(height, width - 0.5)])
    v = np.concatenate([np.full(width, 0.5), np.full(width, height - 0.5), rows, rows])
    return bool(np.all(_inside(source_pixels(K, distortion, new_K, u, v), width, height)))


def _scaled(K: np.ndarray, s: float) -> np.ndarray:
    new = K.copy()
    new[0, :2] *= s
    new[1, 1] *= s
    return new


def undistorted_K(K: np.ndarray, distortion: Distortion, width: int, height: int) -> np.ndarray:
    """The pinhole intrinsics for the undistorted photo (see the module docstring): K with its focal lengths (and
    skew) times s, s = 1 if that leaves no pixel blank, else the smallest such s up to :data:`MAX_ZOOM`."""
    K = np.asarray(K, dtype=np.float64)
    if _all_inside(K, distortion, K, width, height):
        return K.copy()
    low, high = 1.0, MAX_ZOOM
    if not _all_inside(K, distortion, _scaled(K, high), width, height):
        return _scaled(K, high)
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if _all_inside(K, distortion, _scaled(K, middle), width, height) else (middle, high)
    return _scaled(K, high)


@dataclass
class Undistorted:
    """A photo resampled into a pinhole camera: its ``pixels``, the camera's ``K`` (3, 3), and how many output
    pixels (``outside``) saw no photo pixel (mask 0 there when the view has a mask)."""

    pixels: Pixels
    K: np.ndarray
    outside: int


def _sample(image: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """(C, H, W) image at (h, w, 2) normalised grid points → (h, w, C)."""
    out = torch.nn.functional.grid_sample(
        image[None], grid[None], mode=mode, padding_mode="border", align_corners=False
    )
    return out[0].permute(1, 2, 0)


def undistort_pixels(
    pixels: Pixels, K: np.ndarray, distortion: Distortion, new_K: np.ndarray | None = None
) -> Undistorted:
    """Resample ``pixels`` (the photo, taken with intrinsics ``K`` and ``distortion``) into the pinhole camera
    ``new_K`` (default :func:`undistorted_K`) of the same size → :class:`Undistorted`."""
    K = np.asarray(K, dtype=np.float64)
    height, width = pixels.height, pixels.width
    new_K = undistorted_K(K, distortion, width, height) if new_K is None else np.asarray(new_K, dtype=np.float64)
    channels = [torch.from_numpy(np.ascontiguousarray(pixels.rgb, dtype=np.float32)).permute(2, 0, 1)]
    if pixels.mask is not None:
        channels.append(torch.from_numpy(np.asarray(pixels.mask, dtype=np.float32))[None])
    image = torch.cat(channels)
    depth = None if pixels.depth is None else torch.from_numpy(np.asarray(pixels.depth, dtype=np.float32))[None]
    smooth = np.empty((height, width, image.shape[0]), np.float32)
    nearest = None if depth is None else np.empty((height, width), np.float32)
    outside = 0
    step = max(1, _CHUNK // width)
    for start in range(0, height, step):
        rows = np.arange(start, min(height, start + step))
        v, u = np.meshgrid(rows + 0.5, np.arange(width) + 0.5, indexing="ij")
        source = source_pixels(K, distortion, new_K, u, v)
        valid = _inside(source, width, height)
        outside += int(valid.size - valid.sum())
        grid = np.where(valid[..., None], source / [width, height] * 2 - 1, -2.0)
        grid = torch.from_numpy(grid.astype(np.float32))
        block = _sample(image, grid, "bilinear").numpy()
        if pixels.mask is not None:
            block[..., 3] = np.where(valid, block[..., 3], 0.0)
        smooth[start : start + len(rows)] = block
        if depth is not None:
            nearest[start : start + len(rows)] = np.where(valid, _sample(depth, grid, "nearest").numpy()[..., 0], 0.0)
    rgb = np.ascontiguousarray(smooth[..., :3])
    mask = np.ascontiguousarray(smooth[..., 3]) if pixels.mask is not None else None
    return Undistorted(Pixels(rgb, mask, nearest, pixels.orientation), new_K, outside)
