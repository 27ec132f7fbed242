"""GTR-style camera folders: ``cam_XXX.txt`` next to ``rgb_XXX.png``.

A camera file reads::

    extrinsic
    r00 r01 r02 tx
    r10 r11 r12 ty
    r20 r21 r22 tz
    0 0 0 1

    intrinsic
    fx fy cx cy height width

The 3×4 (or 4×4) block is the OpenCV world-to-camera matrix; intrinsics are in pixels for an image of
``height`` × ``width`` (pixel-corner convention, centre = width / 2). Blank lines and the header words are
free; the intrinsic line may also give only ``fx fy cx cy`` (then the image's size is used). When the image's
size differs from the file's, the intrinsics are scaled to the image (the stored image: a JPEG with an EXIF
orientation tag is then turned upright with its camera, see :mod:`backend.inputs.photo`).

Each ``cam_XXX.txt`` pairs with ``rgb_XXX`` (``.png``, ``.jpg`` or ``.jpeg``) and, when present, a mask
``mask_XXX.png``; views are ordered by ``XXX`` (numerically when it is a number) and named ``rgb_XXX``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..cameras import Camera, intrinsics
from ..errors import InputError
from ..views import Bounds, Job
from .images import find_with_suffix, load_pixels
from .photo import make_view


def _numbers(line: str) -> list[float] | None:
    try:
        return [float(token) for token in line.split()]
    except ValueError:
        return None


def parse_cam_txt(text: str, source: str = "camera file") -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Parse one camera file → (world_to_camera (4, 4), K (3, 3), (width, height) or None)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fix = "write 'extrinsic', 3 or 4 rows of 4 numbers, a header line, then 'fx fy cx cy height width'."
    if not lines or lines[0].lower() != "extrinsic":
        raise InputError(f"{source}: first line must be 'extrinsic'", fix=fix)
    rows = []
    position = 1
    while position < len(lines) and len(rows) < 4:
        values = _numbers(lines[position])
        if values is None:
            break
        if len(values) != 4:
            raise InputError(f"{source}: extrinsic rows need 4 numbers, got {lines[position]!r}", fix=fix)
        rows.append(values)
        position += 1
    if len(rows) == 3:
        rows.append([0.0, 0.0, 0.0, 1.0])
    if len(rows) != 4:
        raise InputError(f"{source}: expected 3 or 4 extrinsic rows, got {len(rows)}", fix=fix)
    if position < len(lines) and _numbers(lines[position]) is None:
        position += 1  # the "intrinsic" header
    values = _numbers(lines[position]) if position < len(lines) else None
    if values is None or len(values) not in (4, 6):
        raise InputError(f"{source}: missing the 'fx fy cx cy height width' line", fix=fix)
    K = intrinsics(*values[:4])
    size = (round(values[5]), round(values[4])) if len(values) == 6 else None
    if size is not None and min(size) <= 0:
        raise InputError(f"{source}: image size must be positive, got height {values[4]} width {values[5]}", fix=fix)
    return np.asarray(rows, dtype=np.float64), K, size


def _sort_key(key: str):
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def find_cam_files(folder) -> list[tuple[str, Path]]:
    """``(XXX, cam_XXX.txt)`` pairs of a folder, sorted by XXX."""
    found = []
    for path in Path(folder).glob("cam_*.txt"):
        match = re.fullmatch(r"cam_(.+)\.txt", path.name)
        if match:
            found.append((match.group(1), path))
    return sorted(found, key=lambda item: _sort_key(item[0]))


def _sibling(folder: Path, stem: str) -> Path:
    return find_with_suffix(folder / stem) or folder / (stem + ".png")


def load_gtr_folder(folder, *, options: dict | None = None, bounds: Bounds | None = None) -> Job:
    """Read a ``cam_XXX.txt`` + ``rgb_XXX.png`` folder → :class:`Job` (not yet validated)."""
    folder = Path(folder)
    options = dict(options or {})
    cams = find_cam_files(folder)
    if not cams:
        raise InputError(f"no cam_*.txt files in {folder}", fix="point at the folder holding cam_XXX.txt files.")
    notes: list[str] = []
    views = []
    for index, (key, cam_path) in enumerate(cams):
        name = f"rgb_{key}"
        try:
            text = cam_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {cam_path} ({exc})", view=name, index=index, fix="check the file.") from None
        try:
            w2c, K, size = parse_cam_txt(text, cam_path.name)
        except InputError as exc:
            raise InputError(exc.message, view=name, index=index, fix=exc.fix) from None
        mask = folder / f"mask_{key}.png"
        pixels = load_pixels(
            _sibling(folder, name), options, mask_path=mask if mask.is_file() else None, view=name, index=index
        )
        width, height = size if size is not None else (pixels.width, pixels.height)
        camera = Camera(w2c, K, width, height)
        if (width, height) != (pixels.width, pixels.height):
            camera = camera.scaled(pixels.width, pixels.height)
        views.append(make_view(name, pixels, camera, index=index, notes=notes))
    return Job(views=views, bounds=bounds, options=options, source=str(folder), warnings=notes)
