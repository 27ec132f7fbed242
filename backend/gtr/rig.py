"""The canonical frame of GTR's training rig, and moving the user's views into it.

The official model was trained on objects centred at the origin of a **Y-up** world inside [-1, 1]³, seen by 6
perspective cameras at distance 4 with a 30° field of view, looking at the origin from elevations alternating 20°
and -10° and azimuths 30°, 90°, …, 330°. Azimuth is a right-handed rotation about +Y starting from +Z: a camera at
elevation E and azimuth A sits at ρ · (cos E sin A, sin E, cos E cos A).

The user's world is usually Blender's **Z-up** world. The map world → canonical is a similarity

    canonical = s · R · (world − centre)

where ``R`` is a proper rotation (det +1) taking the user's up axis to +Y, ``centre`` is the centre of the object's
bounds and ``s`` scales the largest half-extent of the bounds to ``RigConfig.object_extent``. For Z-up worlds
``R`` maps (x, y, z) → (x, z, −y), so Blender's front view (camera on −Y looking at +Y) becomes the canonical front
(camera on +Z, azimuth 0).

Cameras follow :mod:`backend.cameras` (OpenCV axes, pixel intrinsics with the image's top-left corner at 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Camera, focal_from_fov, intrinsics, look_at
from ..errors import InputError
from ..frame import CanonicalFrame, frame_for_bounds
from ..normalise import NormaliseConfig, bounds_from_masks
from ..progress import Hooks
from ..views import Bounds, View
from .rays import composite_on_white

OFFICIAL_AZIMUTHS_DEGREES = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
OFFICIAL_ELEVATIONS_DEGREES = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)

FALLBACK_ADVICE = "try --method fit (per-scene optimisation), which makes no assumption about the rig"
"""What the rig warnings suggest when the input is far from what the network was trained on."""

MAX_SQUARE_GROWTH = 8
""":func:`square_view` refuses a square side over this many times the image's larger side (a wild principal point)."""

_UP_TO_Y = {
    "y": np.eye(3),
    "z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),  # (x, y, z) → (x, z, −y)
}


@dataclass(frozen=True)
class RigConfig:
    """The user's world convention, the training rig, and how far from it the rig warnings tolerate.

    The tolerances are deliberately wider than the training rig: the network sees ray directions and moments, so it
    copes with moderate changes of distance, field of view and elevation; beyond these ranges the object's apparent
    size, perspective and the seen parts of the object differ enough from training that results degrade visibly.
    """

    up_axis: str = "z"
    """The user's world up axis: "z" (Blender, nerf_synthetic) or "y"."""
    object_extent: float = 0.85
    """Half-size the largest side of the object's bounds is scaled to inside [-1, 1]³ (room for marching cubes)."""
    hull_resolution: int = 96
    """Cells per side of the visual-hull grid used for bounds when the job gives none."""

    # The training rig (official fact sheet).
    distance: float = 4.0
    """Camera distance from the origin, canonical units."""
    fov_degrees: float = 30.0
    """Full field of view of the square input images."""
    elevation_range: tuple[float, float] = (-10.0, 20.0)
    """Lowest and highest camera elevation above the canonical XZ plane, degrees."""
    views: int = 6
    """Number of input views of the training rig."""

    # Warning tolerances.
    distance_ratio_range: tuple[float, float] = (0.67, 1.5)
    """Camera distance / ``distance`` outside this range warns (about ±50 % apparent object size)."""
    fov_range_degrees: tuple[float, float] = (20.0, 45.0)
    """Field of view (either image axis) outside this range warns."""
    elevation_limits_degrees: tuple[float, float] = (-30.0, 45.0)
    """Camera elevation outside this range warns (the model never saw the object from far above or below)."""
    views_range: tuple[int, int] = (4, 8)
    """A number of views outside this range warns."""
    look_at_tolerance_degrees: float = 15.0
    """Angle between a camera's optical axis and its direction to the origin above which it warns."""
    max_azimuth_gap_degrees: float = 150.0
    """Largest gap between neighbouring camera azimuths (about +Y) above which it warns (the official rig: 60°)."""

    def __post_init__(self):
        if self.up_axis not in _UP_TO_Y:
            raise ValueError(f"up_axis must be one of {sorted(_UP_TO_Y)}, got {self.up_axis!r}")
        if not 0.0 < self.object_extent <= 1.0:
            raise ValueError(f"object_extent must lie in (0, 1], got {self.object_extent}")


def up_rotation(up_axis: str) -> np.ndarray:
    """(3, 3) proper rotation taking the user's ``up_axis`` ("z" or "y") to +Y."""
    if up_axis not in _UP_TO_Y:
        raise ValueError(f"up_axis must be one of {sorted(_UP_TO_Y)}, got {up_axis!r}")
    return _UP_TO_Y[up_axis].copy()


def require_masks(views: list[View]) -> None:
    """Raise :class:`InputError` naming the first view without a mask: the GTR input needs alpha."""
    for index, view in enumerate(views):
        if view.mask is None:
            raise InputError(
                "the GTR method needs an object mask for every view, and this view has none.",
                view=view.name,
                index=index,
                fix="give images with alpha, mask files, or a background colour key.",
            )


def canonical_frame(
    views: list[View], bounds: Bounds | None, config: RigConfig, device, hooks: Hooks | None = None
) -> CanonicalFrame:
    """The canonical frame for a job: from its ``bounds`` if given, else from the visual hull of the masks."""
    if bounds is None:
        require_masks(views)
        with torch.no_grad():
            bounds = bounds_from_masks(views, NormaliseConfig(hull_resolution=config.hull_resolution), device, hooks)
    return frame_for_bounds(bounds, config.object_extent, up_rotation(config.up_axis))


# ---------------------------------------------------------------------------------------------------------------
# Square generator images


def _square_window(view: View) -> tuple[int, int, int]:
    """(x0, y0, side): an integer square window of the image, centred on the principal point to within half a
    pixel, that keeps every object pixel. It crops background where the largest centred square inside the image
    already holds the object, and pads otherwise. Negative offsets / a side past the image mean padding."""
    cam = view.camera
    H, W = view.mask.shape
    cx, cy = float(cam.K[0, 2]), float(cam.K[1, 2])
    inner = 2.0 * min(cx, W - cx, cy, H - cy)  # largest centred square inside the image (≤ 0: pp outside)
    rows, cols = np.nonzero(view.mask > 1e-3)
    if rows.size:  # object pixel (col, row) covers [col, col + 1] × [row, row + 1]
        lo = np.array([cols.min(), rows.min()], dtype=np.float64)
        hi = np.array([cols.max() + 1, rows.max() + 1], dtype=np.float64)
    else:  # nothing to keep: keep the whole image
        lo, hi = np.zeros(2), np.array([W, H], dtype=np.float64)
    pp = np.array([cx, cy])
    needed = 2.0 * float(np.max(np.maximum(pp - lo, hi - pp)))
    side = max(int(np.ceil(needed - 1e-9)), int(np.floor(inner + 1e-9)), 1)
    while True:  # rounding the offset can cut half a pixel: one more pixel of side always suffices
        x0, y0 = (int(v) for v in np.round(pp - side / 2))
        if x0 <= lo[0] and y0 <= lo[1] and x0 + side >= hi[0] and y0 + side >= hi[1]:
            return x0, y0, side
        side += 1


def _window(image: np.ndarray, x0: int, y0: int, side: int, fill: float) -> np.ndarray:
    """The ``side`` × ``side`` window of ``image`` (H, W[, C]) at (x0, y0), ``fill`` outside the image."""
    H, W = image.shape[:2]
    out = np.full((side, side) + image.shape[2:], fill, dtype=np.float32)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def resize_image(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(S, S[, C]) float32 → (size, size[, C]); pixel-corner convention (``align_corners=False``)."""
    if image.shape[0] == size:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    if mode == "nearest":
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    t = t[0, 0] if image.ndim == 2 else t[0].permute(1, 2, 0)
    return t.contiguous().numpy()


def square_view(view: View, size: int) -> View:
    """The view as a ``size`` × ``size`` generator input with the principal point at (about) the image centre.

    The image is cropped and / or padded to a square around its principal point (to within half a source pixel) that
    keeps every object pixel (padding: mask 0, white RGB; cropping only ever removes background), then resized with
    an antialiased bilinear filter. The returned RGB is composited on white (RGB · a + (1 − a)); the mask stays
    separate. ``K`` is adjusted exactly: the window offset shifts (cx, cy), the resize scales the first two rows by
    size / side. Depth, if any, is resampled with nearest neighbours (0 = unknown outside the image).
    """
    require_masks([view])
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    x0, y0, side = _square_window(view)
    if side > MAX_SQUARE_GROWTH * max(view.mask.shape):
        raise InputError(
            f"the principal point ({view.camera.K[0, 2]:.1f}, {view.camera.K[1, 2]:.1f}) lies far outside the "
            f"{view.mask.shape[1]}×{view.mask.shape[0]} image: centring it would need a {side}-pixel square.",
            view=view.name,
            fix="check the intrinsics (cx, cy are in pixels from the image's top-left corner).",
        )
    K = view.camera.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    cam = Camera(view.camera.world_to_camera.copy(), K, side, side, view.camera.orthographic).scaled(size, size)
    rgb = resize_image(_window(composite_on_white(view.rgb, view.mask), x0, y0, side, 1.0), size, "bilinear")
    mask = resize_image(_window(view.mask.astype(np.float32), x0, y0, side, 0.0), size, "bilinear")
    depth = None
    if view.depth is not None:
        depth = resize_image(_window(view.depth.astype(np.float32), x0, y0, side, 0.0), size, "nearest")
    return replace(view, camera=cam, rgb=np.clip(rgb, 0.0, 1.0), mask=np.clip(mask, 0.0, 1.0), depth=depth)


# ---------------------------------------------------------------------------------------------------------------
# The official rig and warnings about departures from it


def official_rig_cameras(size: int = 512, config: RigConfig | None = None) -> list[Camera]:
    """The six training-rig cameras in the canonical frame (Y-up), square ``size`` images, principal point centred.

    Each looks at the origin: forward f = normalize(−c), right = normalize((0, −1, 0) × f), down = f × right.
    """
    config = config or RigConfig()
    focal = focal_from_fov(np.radians(config.fov_degrees), size)
    K = intrinsics(focal, focal, size / 2, size / 2)
    cameras = []
    for azimuth, elevation in zip(OFFICIAL_AZIMUTHS_DEGREES, OFFICIAL_ELEVATIONS_DEGREES):
        centre = config.distance * _direction(np.radians(elevation), np.radians(azimuth))
        cameras.append(Camera(look_at(centre, np.zeros(3), up=(0.0, 1.0, 0.0)), K.copy(), size, size))
    return cameras


def _direction(elevation: float, azimuth: float) -> np.ndarray:
    """Unit vector at ``elevation`` above the XZ plane and ``azimuth`` about +Y from +Z (radians)."""
    return np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])


def _fov_degrees(camera: Camera) -> tuple[float, float]:
    """Full horizontal and vertical field of view of a perspective camera, degrees."""
    fov_x = 2.0 * np.degrees(np.arctan(camera.width / (2.0 * abs(camera.K[0, 0]))))
    fov_y = 2.0 * np.degrees(np.arctan(camera.height / (2.0 * abs(camera.K[1, 1]))))
    return float(fov_x), float(fov_y)


def _elevation_degrees(centre: np.ndarray) -> float:
    norm = float(np.linalg.norm(centre))
    return float(np.degrees(np.arcsin(np.clip(centre[1] / norm, -1.0, 1.0)))) if norm > 0 else 0.0


def _largest_azimuth_gap_degrees(centres: list[np.ndarray]) -> float:
    """Largest angle between neighbouring camera azimuths about +Y (360 for fewer than 2 off-axis cameras)."""
    azimuths = sorted(float(np.degrees(np.arctan2(c[0], c[2]))) % 360.0 for c in centres if np.hypot(c[0], c[2]) > 1e-9)
    if len(azimuths) < 2:
        return 360.0
    gaps = np.diff(azimuths + [azimuths[0] + 360.0])
    return float(gaps.max())


def _listing(names: list[str], values: list[str] | None = None, limit: int = 6) -> str:
    """Views for a message, e.g. 'a (1), b (2) and 3 more': at most ``limit`` named."""
    items = [f"{n} ({v})" for n, v in zip(names, values)] if values is not None else list(names)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _columns(pairs: list[tuple[str, object]], fmt: str = "{}") -> tuple[list[str], list[str]]:
    """(name, value) pairs → names and formatted values, for :func:`_listing`."""
    return [n for n, _ in pairs], [fmt.format(v) for _, v in pairs]


def _outside(value: float, limits: tuple[float, float]) -> bool:
    return not limits[0] <= value <= limits[1]


def rig_warnings(cameras: list[Camera], config: RigConfig | None = None, names: list[str] | None = None) -> list[str]:
    """Human-readable warnings where the cameras (in the canonical frame) depart from the training rig.

    Pass the cameras the generator will see (after :func:`square_view`, which can change the field of view by
    padding). ``names`` label the views in the messages (default: "#0", "#1", …). Checks: view count, orthographic
    cameras, camera distance to the origin, field of view (both image axes), elevation above the canonical XZ plane,
    whether each camera looks at the origin, and how far around the object the cameras go. The official rig gives
    no warnings.
    """
    config = config or RigConfig()
    names = list(names) if names is not None else [f"#{n}" for n in range(len(cameras))]
    advice = f"Results may be poor; {FALLBACK_ADVICE}."
    warnings: list[str] = []

    lo, hi = config.views_range
    if _outside(len(cameras), (lo, hi)):
        warnings.append(
            f"{len(cameras)} views given; the model was trained on {config.views} (this check accepts {lo} to {hi}). "
            + ("Too few views leave parts of the object unseen. " if len(cameras) < lo else "")
            + ("Many views cost memory and are outside the training distribution. " if len(cameras) > hi else "")
            + advice
        )

    ortho = [n for n, c in zip(names, cameras) if c.orthographic]
    if ortho:
        warnings.append(
            f"orthographic cameras ({_listing(ortho)}): the model only knows perspective cameras (training: "
            f"{config.fov_degrees:g}° field of view at distance {config.distance:g}), so its output for these views "
            f"will very likely be wrong. Use perspective cameras, or {FALLBACK_ADVICE}."
        )

    persp = [(n, c) for n, c in zip(names, cameras) if not c.orthographic]
    if persp:
        warnings += _distance_warnings(persp, config, advice)
        warnings += _fov_warnings(persp, config, advice)
        warnings += _elevation_warnings(persp, config, advice)
        warnings += _look_at_warnings(persp, config)
        warnings += _coverage_warnings(persp, config, advice)
    return warnings


def _distance_warnings(persp: list[tuple[str, Camera]], config: RigConfig, advice: str) -> list[str]:
    distances = [float(np.linalg.norm(c.centre)) for _, c in persp]
    median = float(np.median(distances))
    lo, hi = (config.distance * r for r in config.distance_ratio_range)
    trained = f"the model was trained at distance {config.distance:g} (this check accepts {lo:.2g} to {hi:.2g})"
    if _outside(median, (lo, hi)):
        return [
            f"the cameras' median distance to the object centre is {median:.3g} canonical units (object scaled to "
            f"±{config.object_extent:g}); {trained}. The object will look "
            f"{'larger' if median < lo else 'smaller'} than in training. {advice}"
        ]
    far = [(n, d) for (n, _), d in zip(persp, distances) if _outside(d, (lo, hi))]
    if far:
        return [
            f"some cameras are much nearer or farther than the others: {_listing(*_columns(far, '{:.3g}'))}; "
            f"{trained}. These views may be misread. {advice}"
        ]
    return []


def _fov_warnings(persp: list[tuple[str, Camera]], config: RigConfig, advice: str) -> list[str]:
    off = []
    for name, cam in persp:
        fx, fy = _fov_degrees(cam)
        if _outside(fx, config.fov_range_degrees) or _outside(fy, config.fov_range_degrees):
            off.append((name, f"{fx:.0f}° × {fy:.0f}°"))
    if not off:
        return []
    lo, hi = config.fov_range_degrees
    return [
        f"field of view far from training for {len(off)} of {len(persp)} views: {_listing(*_columns(off))}; the "
        f"model was trained on {config.fov_degrees:g}° square images (this check accepts {lo:g}° to {hi:g}°). "
        f"Wide-angle or telephoto views change the perspective and the object's apparent size. {advice}"
    ]


def _elevation_warnings(persp: list[tuple[str, Camera]], config: RigConfig, advice: str) -> list[str]:
    elevations = [(name, _elevation_degrees(cam.centre)) for name, cam in persp]
    off = [(name, e) for name, e in elevations if _outside(e, config.elevation_limits_degrees)]
    if not off:
        return []
    lo, hi = config.elevation_range
    low, high = config.elevation_limits_degrees
    return [
        f"camera elevation far from training for {len(off)} of {len(persp)} views: "
        f"{_listing(*_columns(off, '{:.0f}°'))}; "
        f"the model was trained on elevations {lo:g}° to {hi:g}° above the horizontal plane (this check accepts "
        f"{low:g}° to {high:g}°). Views from far above or below, or a wrong up axis, lead to poor results. {advice}"
    ]


def _look_at_warnings(persp: list[tuple[str, Camera]], config: RigConfig) -> list[str]:
    off = []
    for name, cam in persp:
        centre = cam.centre
        distance = float(np.linalg.norm(centre))
        if distance > 1e-9:
            cosine = float(np.clip(np.dot(cam.forward, -centre / distance), -1.0, 1.0))
            angle = float(np.degrees(np.arccos(cosine)))
            if angle > config.look_at_tolerance_degrees:
                off.append((name, angle))
    if not off:
        return []
    return [
        f"cameras not aimed at the object centre: {_listing(*_columns(off, '{:.0f}°'))} between the optical axis and "
        f"the direction to the centre (tolerance {config.look_at_tolerance_degrees:g}°); the model was trained on "
        f"cameras looking at the object's centre. Check the bounds and the cameras, or {FALLBACK_ADVICE}."
    ]


def _coverage_warnings(persp: list[tuple[str, Camera]], config: RigConfig, advice: str) -> list[str]:
    gap = _largest_azimuth_gap_degrees([c.centre for _, c in persp])
    if gap <= config.max_azimuth_gap_degrees:
        return []
    return [
        f"the cameras leave a {gap:.0f}° gap around the object (about the up axis); the model was trained on "
        f"{config.views} views spread all around ({360.0 / config.views:.0f}° apart). The unseen side will be "
        f"guessed. {advice}"
    ]
