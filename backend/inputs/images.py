"""Pixels from files: colour images, masks and depth maps, read with Pillow / numpy.

Colour: 8- or 16-bit PNG, JPEG, anything else Pillow opens; modes 1 / L / LA / P / PA / RGB / RGBA /
I;16 / I / F. The result is (H, W, 3) float32 sRGB in [0, 1] plus (H, W) float32 alpha in [0, 1] when the
file has an alpha channel (or a palette transparency), else None. Pixels are returned as stored; a JPEG's EXIF
orientation tag is read by :func:`read_orientation` and applied, with the camera, by :mod:`backend.inputs.photo`.

Masks, chosen per job by the option ``mask_source`` (see :func:`choose_mask`):

- ``"alpha"``: the image's alpha channel.
- ``"file"``: a greyscale mask file per view (values in [0, 1]; > 0.5 = object, soft edges kept).
- ``"color_key"``: distance to a solid background colour, option ``"background"`` ([r, g, b] as floats in
  0..1, or ints in 0..255, or "#rrggbb"), with ``"background_tolerance"`` (default 0.1, Euclidean RGB distance
  in 0..1 units): mask = clip((distance − tolerance) / tolerance, 0, 1), so pixels within the tolerance are
  background and pixels twice as far are fully object.
- ``"none"``: no mask (the job must then give bounds).
- ``"auto"`` (default): alpha if the image has a non-trivial alpha (some pixel below 1), else the view's mask
  file if it has one, else the colour key if ``"background"`` is set, else no mask.

Depth: ``.npy`` holding (H, W) (or (H, W, 1)) camera-z depth in world units, or a 16-bit greyscale PNG whose
integers are multiplied by ``depth_scale`` (world units per step; default 0.001, i.e. millimetres → metres).
Non-finite or non-positive depth means unknown and becomes 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..options import OPTIONS

MASK_SOURCES = OPTIONS["mask_source"].choices
DEFAULT_DEPTH_SCALE = OPTIONS["depth_scale"].default
DEFAULT_BACKGROUND_TOLERANCE = OPTIONS["background_tolerance"].default
_ALPHA_TRIVIAL = 1.0 - 0.5 / 255.0
EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
"""Suffixes tried, in this order, where a format names an image without its extension."""


def find_with_suffix(stem: Path) -> Path | None:
    """``stem`` (a path without extension) plus the first of :data:`IMAGE_SUFFIXES` that is a file, or None."""
    return next((c for c in (stem.parent / (stem.name + s) for s in IMAGE_SUFFIXES) if c.is_file()), None)


def _open(path: Path, kind: str, view: str | None, index: int | None):
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{kind} file not found: {path}",
            view=view,
            index=index,
            fix="check the path (relative paths start at the job file's folder) or remove the view.",
        )
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(
            f"cannot read {kind} file {path} ({exc})",
            view=view,
            index=index,
            fix="re-export it as PNG or JPEG; the file may be truncated or corrupt.",
        ) from None
    return image


def _to_float(array: np.ndarray, mode: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if mode == "F":
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    # I;16* and I: 16-bit integers (PNG stores 16-bit greyscale this way).
    return np.clip(array.astype(np.float32) / 65535.0, 0.0, 1.0)


def read_image(path, *, view: str | None = None, index: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a colour image → ((H, W, 3) float32 RGB in [0, 1], (H, W) float32 alpha or None).

    Raises :class:`InputError` naming ``view`` / ``index`` when the file is missing or unreadable.
    """
    image = _open(Path(path), "image", view, index)
    mode = image.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_float(np.asarray(image), mode)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "LA":
        array = _to_float(np.asarray(image), mode)
        return np.repeat(array[..., :1], 3, axis=2), np.ascontiguousarray(array[..., 1])
    if mode not in ("RGB", "RGBA"):
        has_alpha = "A" in mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    array = _to_float(np.asarray(image), mode)
    rgb = np.ascontiguousarray(array[..., :3])
    alpha = np.ascontiguousarray(array[..., 3]) if mode == "RGBA" else None
    return rgb, alpha


def read_mask(path, *, view: str | None = None, index: int | None = None) -> np.ndarray:
    """Read a greyscale mask file → (H, W) float32 in [0, 1] (> 0.5 = object; soft edges kept).

    Colour files are converted to luminance. A file whose only information is its alpha channel (constant
    colour, varying alpha) uses the alpha.
    """
    rgb, alpha = read_image(path, view=view, index=index)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if alpha is not None and np.ptp(grey) < 1e-6 and np.ptp(alpha) > 0:
        return np.ascontiguousarray(alpha, dtype=np.float32)
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def parse_colour(value) -> np.ndarray:
    """A background colour → (3,) float32 in [0, 1].

    Accepts [r, g, b] floats in 0..1, [r, g, b] ints in 0..255 (ints all 0 or 1 are read as 0..1), or "#rrggbb".
    """
    fix = 'write "background": [1, 1, 1] (0..1 floats), [255, 255, 255] (0..255 ints) or "#ffffff".'
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6:
            raise InputError(f"cannot read background colour {value!r}", fix=fix)
        try:
            return np.array([int(text[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float32) / 255.0
        except ValueError:
            raise InputError(f"cannot read background colour {value!r}", fix=fix) from None
    try:
        values = [v for v in value]
        colour = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"cannot read background colour {value!r}", fix=fix) from None
    if colour.shape != (3,) or not np.all(np.isfinite(colour)) or np.any(colour < 0):
        raise InputError(f"background colour must be 3 non-negative numbers, got {value!r}", fix=fix)
    all_ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if np.any(colour > 1.0):
        if not all_ints and np.any(colour != np.round(colour)):
            raise InputError(f"background colour {value!r} mixes 0..1 and 0..255 ranges", fix=fix)
        colour = colour / 255.0
    if np.any(colour > 1.0):
        raise InputError(f"background colour {value!r} is out of range", fix=fix)
    return colour.astype(np.float32)


def color_key_mask(rgb: np.ndarray, background, tolerance: float = DEFAULT_BACKGROUND_TOLERANCE) -> np.ndarray:
    """Soft mask from a solid background: (H, W) float32, 0 within ``tolerance`` of the key, 1 beyond twice it."""
    key = parse_colour(background)
    tolerance = float(tolerance)
    if not tolerance > 0:
        raise InputError(f"background_tolerance must be > 0, got {tolerance}", fix="use e.g. 0.1.")
    distance = np.linalg.norm(rgb.astype(np.float32) - key, axis=-1)
    return np.clip((distance - tolerance) / tolerance, 0.0, 1.0).astype(np.float32)


def has_useful_alpha(alpha: np.ndarray | None) -> bool:
    """True when ``alpha`` exists and some pixel is not fully opaque."""
    return alpha is not None and bool(np.any(alpha < _ALPHA_TRIVIAL))


def choose_mask(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    mask_path,
    options: dict,
    *,
    view: str | None = None,
    index: int | None = None,
) -> np.ndarray | None:
    """The view's mask per ``options["mask_source"]`` (default "auto"); None when the job gives no mask.

    ``mask_path`` is the view's mask file or None. Raises :class:`InputError` when the chosen source is absent.
    """
    source = options.get("mask_source", "auto")
    if source not in MASK_SOURCES:
        raise InputError(
            f"unknown mask_source {source!r}", fix=f"use one of {', '.join(repr(s) for s in MASK_SOURCES)}."
        )
    background = options.get("background")
    tolerance = options.get("background_tolerance", DEFAULT_BACKGROUND_TOLERANCE)
    if source == "none":
        return None
    if source == "alpha":
        if alpha is None:
            raise InputError(
                "mask_source is 'alpha' but the image has no alpha channel",
                view=view,
                index=index,
                fix="export RGBA images, or set mask_source to 'file', 'color_key' or 'auto'.",
            )
        return alpha
    if source == "file":
        if mask_path is None:
            raise InputError(
                "mask_source is 'file' but the view has no mask file",
                view=view,
                index=index,
                fix="give every view a mask (job.json 'mask', nerfstudio 'mask_path'), or change mask_source.",
            )
        return read_mask(mask_path, view=view, index=index)
    if source == "color_key":
        if background is None:
            raise InputError(
                "mask_source is 'color_key' but no background colour is set",
                view=view,
                index=index,
                fix='add "background": [r, g, b] to the job options.',
            )
        return color_key_mask(rgb, background, tolerance)
    # auto
    if has_useful_alpha(alpha):
        return alpha
    if mask_path is not None:
        return read_mask(mask_path, view=view, index=index)
    if background is not None:
        return color_key_mask(rgb, background, tolerance)
    return None


def read_depth(path, *, depth_scale: float | None = None, view: str | None = None, index: int | None = None):
    """Read a depth map → (H, W) float32 camera-z depth, 0 where unknown.

    ``.npy``: values in world units. Image files (16-bit PNG): integer × ``depth_scale`` (default 0.001).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise InputError(f"depth file not found: {path}", view=view, index=index, fix="check the path.")
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read depth file {path} ({exc})", view=view, index=index, fix="save it with numpy.save."
            ) from None
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise InputError(
                f"depth array must be (H, W), got shape {depth.shape}",
                view=view,
                index=index,
                fix="save one (H, W) float32 array per view.",
            )
    else:
        image = _open(path, "depth", view, index)
        raw = np.asarray(image)
        if raw.ndim == 3:
            raw = raw[..., 0]
        scale = DEFAULT_DEPTH_SCALE if depth_scale is None else float(depth_scale)
        depth = raw.astype(np.float32) * np.float32(scale)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return np.ascontiguousarray(depth)


def read_orientation(path) -> int:
    """The image file's EXIF orientation tag (1..8; 1 = stored upright), 1 when it has none or it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


@dataclass
class Pixels:
    """One view's arrays as loaded: ``rgb`` (H, W, 3), ``mask`` (H, W) or None, ``depth`` (H, W) or None, all in
    the image file's stored pixel grid, and the file's EXIF ``orientation`` (1 = upright as stored)."""

    rgb: np.ndarray
    mask: np.ndarray | None
    depth: np.ndarray | None
    orientation: int = 1

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def load_pixels(
    image_path,
    options: dict,
    *,
    mask_path=None,
    depth_path=None,
    depth_scale: float | None = None,
    view: str | None = None,
    index: int | None = None,
) -> Pixels:
    """Read a view's image, its mask (per ``options["mask_source"]``), optional depth and EXIF orientation.

    ``depth_scale`` (for depth PNGs) falls back to ``options["depth_scale"]``, then 0.001. Mask and depth files
    are taken to share the image's stored pixel grid. Sizes are not compared here:
    :func:`backend.inputs.validate.validate_job` does that.
    """
    rgb, alpha = read_image(image_path, view=view, index=index)
    mask = choose_mask(rgb, alpha, mask_path, options, view=view, index=index)
    depth = None
    if depth_path is not None:
        scale = depth_scale if depth_scale is not None else options.get("depth_scale")
        depth = read_depth(depth_path, depth_scale=scale, view=view, index=index)
    return Pixels(rgb, mask, depth, read_orientation(image_path))
