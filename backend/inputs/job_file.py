"""The canonical job file, ``job.json``.

Format (version 1). Paths are relative to the folder holding the job file (absolute paths also work)::

    {
      "version": 1,
      "views": [
        {
          "image": "images/000.png",
          "name": "000",
          "mask": "masks/000.png",
          "depth": "depth/000.npy",
          "depth_scale": 0.001,
          "camera_type": "perspective",
          "world_to_camera": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
          "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
          "width": 512,
          "height": 512
        }
      ],
      "bounds": {"centre": [0, 0, 0], "size": [2, 2, 2]},
      "options": {"preset": "draft", "texture": "vertex", "mask_source": "auto", "background": [1, 1, 1]}
    }

Per view:

- ``image`` (required): RGB or RGBA image (PNG 8/16-bit, JPEG, ...). The camera describes its stored pixels;
  a JPEG with an EXIF orientation tag is turned upright together with its camera (a 90° tag with ``width`` /
  ``height`` of the upright image means the camera was made for the upright image), see
  :mod:`backend.inputs.photo`.
- ``name`` (optional): used in messages and outputs; default the image's file name without extension.
- ``mask`` (optional): greyscale mask, > 0.5 = object. ``depth`` (optional): ``.npy`` (H, W) float32 camera-z
  depth in world units, or a 16-bit PNG whose integers are multiplied by ``depth_scale`` (optional, default
  ``options["depth_scale"]``, else 0.001).
- ``world_to_camera`` (required): 4×4 (a 3×4 is completed with ``[0, 0, 0, 1]``), OpenCV camera axes (x right,
  y down, z forward), world units.
- ``camera_type`` (optional): ``"perspective"`` (default) or ``"orthographic"``; a top-level ``camera_type``
  sets the default for every view. Panoramic / fisheye / equirectangular cameras are rejected.
- Perspective: ``K`` (required) 3×3 in pixels, the image's top-left corner at (0, 0) (a centred camera has
  cx = width / 2).
- Orthographic: either ``K`` (``K[0][0]``, ``K[1][1]`` = pixels per world unit, ``K[0][2]``, ``K[1][2]`` = the
  pixel where the camera's axis meets the image) or ``ortho_scale`` = s, the world-unit extent of the image's
  larger side (Blender's Orthographic Scale), giving fx = fy = max(width, height) / s, with optional ``cx``,
  ``cy`` (default width / 2, height / 2).
- ``width``, ``height`` (optional): the size the camera was made for; default the image's size. When given
  they must equal the image's size (validation fails otherwise: ``K`` would not fit the pixels).

Per job:

- ``version`` (optional, default 1): only 1 exists.
- ``bounds`` (optional): axis-aligned box in world units, ``{"centre": [x, y, z], "size": [sx, sy, sz]}`` (a
  number for a cube; ``"center"`` is accepted too) or ``{"min": [x, y, z], "max": [x, y, z]}``. Without bounds
  every view needs a mask (the pipeline takes the bounds from the masks' visual hull).
- ``options`` (optional): copied into ``Job.options`` (the CLI may override them). The keys, their types,
  ranges and meanings are the registry's, :data:`backend.options.OPTIONS` (``mask_source``, ``background``,
  ``background_tolerance`` and ``depth_scale`` are read while loading, see :mod:`backend.inputs.images`; the
  rest by the pipeline). ``checkpoint`` is relative to this file. Values are checked before any image is read;
  an unknown key is ignored with a warning (in ``Job.warnings``) naming the closest known key.
  Two views with the same image give a warning too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cameras import Camera, intrinsics
from ..errors import InputError
from ..options import check_options
from ..views import Bounds, Job
from .images import load_pixels
from .photo import make_view

JOB_FILE_VERSION = 1
PANORAMIC_TYPES = ("panoramic", "equirectangular", "spherical", "fisheye", "omnidirectional")
CAMERA_TYPES = ("perspective", "orthographic")


def read_json(path: Path) -> dict:
    """Parse a JSON file into a dict, or raise :class:`InputError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}", fix="check the path.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot parse {path} as JSON ({exc})", fix="fix the JSON syntax.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object at the top level", fix="see the job.json format.")
    return data


def resolve(base: Path, value, what: str, view: str | None = None, index: int | None = None) -> Path:
    """``value`` (a path string) relative to ``base``."""
    if not isinstance(value, str) or not value:
        raise InputError(
            f"'{what}' must be a path string, got {value!r}",
            view=view,
            index=index,
            fix=f"write '{what}' as a path relative to the job file's folder.",
        )
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_matrix(value, rows: int, what: str, view: str | None = None, index: int | None = None) -> np.ndarray:
    """A nested list → (rows, cols) float64; a 3×4 ``world_to_camera`` is completed to 4×4."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is not None and rows == 4 and matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix is None or matrix.shape != (rows, rows):
        raise InputError(
            f"'{what}' must be a {rows}x{rows} list of numbers, got {value!r:.80}",
            view=view,
            index=index,
            fix=f"write '{what}' as {rows} rows of {rows} numbers.",
        )
    return matrix


def parse_bounds(value) -> Bounds:
    """``{"centre", "size"}`` or ``{"min", "max"}`` → :class:`Bounds` (see the module docstring)."""
    fix = 'write "bounds": {"centre": [x, y, z], "size": [sx, sy, sz]} (or a number for a cube).'
    if not isinstance(value, dict):
        raise InputError(f"bounds must be an object, got {value!r}", fix=fix)
    try:
        if "min" in value or "max" in value:
            lo = np.asarray(value["min"], dtype=np.float64).reshape(3)
            hi = np.asarray(value["max"], dtype=np.float64).reshape(3)
            centre, size = (lo + hi) / 2, hi - lo
        else:
            centre = np.asarray(value.get("centre", value.get("center")), dtype=np.float64).reshape(3)
            size = np.broadcast_to(np.asarray(value["size"], dtype=np.float64), (3,)).copy()
    except (KeyError, TypeError, ValueError):
        raise InputError(f"cannot read bounds {value!r}", fix=fix) from None
    if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(size)) and np.all(size > 0)):
        raise InputError(f"bounds need a finite centre and a positive size, got {value!r}", fix=fix)
    return Bounds(centre=centre, size=size)


def repeated_images(images: list[Path], names: list[str]) -> list[str]:
    """One warning per image file that more than one view uses (the same photo twice only weights it double)."""
    first: dict[Path, int] = {}
    warnings = []
    for index, image in enumerate(images):
        key = Path(image).resolve()
        if key in first:
            n = first[key]
            warnings.append(
                f"views '{names[n]}' (#{n}) and '{names[index]}' (#{index}) use the same image {image}; "
                "the repeat adds nothing and counts that view twice. Remove one, or point it at its own image."
            )
        else:
            first[key] = index
    return warnings


def check_camera_type(camera_type, view: str | None = None, index: int | None = None) -> str:
    """Normalise a camera type; panoramic or unknown types raise :class:`InputError`."""
    text = str(camera_type).lower()
    if text in PANORAMIC_TYPES:
        raise InputError(
            f"panoramic camera ('{camera_type}') is not supported",
            view=view,
            index=index,
            fix="render or export perspective (pinhole) or orthographic views.",
        )
    if text not in CAMERA_TYPES:
        raise InputError(
            f"unknown camera_type {camera_type!r}", view=view, index=index, fix="use 'perspective' or 'orthographic'."
        )
    return text


def _size(entry: dict, key: str, default: int, name: str, index: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise InputError(
            f"'{key}' must be a positive integer, got {value!r}",
            view=name,
            index=index,
            fix=f"write the image's {key} in pixels or leave it out.",
        )
    return int(value)


def _camera(entry: dict, camera_type: str, width: int, height: int, name: str, index: int) -> Camera:
    if "world_to_camera" not in entry:
        raise InputError(
            "missing 'world_to_camera'", view=name, index=index, fix="add the 4x4 OpenCV world-to-camera matrix."
        )
    w2c = parse_matrix(entry["world_to_camera"], 4, "world_to_camera", name, index)
    if "K" in entry:
        K = parse_matrix(entry["K"], 3, "K", name, index)
    elif camera_type == "orthographic" and "ortho_scale" in entry:
        try:
            scale = float(entry["ortho_scale"])
            cx, cy = float(entry.get("cx", width / 2)), float(entry.get("cy", height / 2))
        except (TypeError, ValueError):
            raise InputError(
                "'ortho_scale', 'cx' and 'cy' must be numbers", view=name, index=index, fix="write them as numbers."
            ) from None
        if not (np.isfinite(scale) and scale > 0):
            raise InputError(
                f"'ortho_scale' must be positive, got {scale}",
                view=name,
                index=index,
                fix="give the world-unit extent of the image's larger side.",
            )
        f = max(width, height) / scale
        K = intrinsics(f, f, cx, cy)
    else:
        need = "'K' or 'ortho_scale'" if camera_type == "orthographic" else "'K'"
        raise InputError(f"missing {need}", view=name, index=index, fix="add the 3x3 intrinsics in pixels.")
    return Camera(w2c, K, width, height, camera_type == "orthographic")


def load_job_file(path, options_override: dict | None = None) -> Job:
    """Read a ``job.json`` (format above) with its images → :class:`Job` (not yet validated).

    ``options_override`` entries replace the file's options (before masks are chosen).
    """
    path = Path(path)
    data = read_json(path)
    base = path.parent
    version = data.get("version", JOB_FILE_VERSION)
    if version != JOB_FILE_VERSION:
        raise InputError(f"unsupported job file version {version!r}", fix=f'write "version": {JOB_FILE_VERSION}.')
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise InputError("'options' must be an object", fix='write options as {"key": value, ...}.')
    checked = check_options(options, f"{path.name} options")
    options = dict(checked.values)
    if isinstance(options.get("checkpoint"), str):  # a GTR checkpoint path is relative to the job file
        options["checkpoint"] = str((path.parent / Path(options["checkpoint"]).expanduser()).resolve())
    options = {**options, **(options_override or {})}
    bounds = parse_bounds(data["bounds"]) if data.get("bounds") is not None else None
    entries = data.get("views")
    if not isinstance(entries, list):
        raise InputError(f"{path} has no 'views' list", fix='add "views": [{"image": ..., ...}, ...].')
    default_type = data.get("camera_type", "perspective")
    notes: list[str] = []
    views, images = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputError(f"view #{index} needs an 'image'", index=index, fix='add "image": "path.png".')
        image = resolve(base, entry["image"], "image", None, index)
        name = str(entry.get("name", image.stem))
        camera_type = check_camera_type(entry.get("camera_type", default_type), name, index)
        mask = resolve(base, entry["mask"], "mask", name, index) if entry.get("mask") else None
        depth = resolve(base, entry["depth"], "depth", name, index) if entry.get("depth") else None
        pixels = load_pixels(
            image,
            options,
            mask_path=mask,
            depth_path=depth,
            depth_scale=entry.get("depth_scale"),
            view=name,
            index=index,
        )
        width = _size(entry, "width", pixels.width, name, index)
        height = _size(entry, "height", pixels.height, name, index)
        camera = _camera(entry, camera_type, width, height, name, index)
        views.append(make_view(name, pixels, camera, index=index, notes=notes))
        images.append(image)
    warnings = checked.warnings + repeated_images(images, [v.name for v in views]) + notes
    return Job(views=views, bounds=bounds, options=options, source=str(path), warnings=warnings)
