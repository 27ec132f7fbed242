"""LLFF datasets: ``poses_bounds.npy`` next to an ``images/`` folder (NeRF's real forward-facing scenes, NeRD's
real captures).

- ``poses_bounds.npy``: float (N, 17); row i is a 3×5 matrix ``[c0 c1 c2 | t | hwf]`` flattened row by row,
  then the near and far depth bounds. ``c0 c1 c2`` are the camera-to-world rotation's columns for the camera's
  **down, right and backwards** axes, ``t`` the camera centre, ``hwf`` = (height, width, focal) in pixels of the
  images the poses were computed from. In OpenCV axes: right = c1, down = c0, forward = −c2, so
  camera-to-world = [c1 c0 −c2 | t].
- Photos: rows follow the sorted file names of the photos in ``images/`` (LLFF runs COLMAP on that folder and
  writes the rows in that order). When ``images/`` is missing, the downscaled ``images_<n>`` with the smallest n
  is used (LLFF's naming: ``images_4`` holds quarter-size copies).
- Intrinsics: the focal length scaled to the photo's size (hwf is for the original photos: focal · photo width
  / width, likewise for the height; the photo must be a copy scaled by one factor, to within a pixel), the
  principal point at the photo's centre, no lens distortion (LLFF keeps none).
- Masks (optional): ``masks/`` next to ``images/`` with a file of each photo's stem (``.png``, ``.jpg`` or
  ``.jpeg``); > 0.5 = object, chosen per ``mask_source`` as for the other formats (``"none"`` ignores them).
- The near/far bounds are not used: the job's bounds, or the masks' visual hull, bound the object.
- EXIF orientation: the poses come from COLMAP, which reads the stored pixels (see :mod:`backend.inputs.photo`).

Views are named after the photos' stems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..cameras import Camera, intrinsics
from ..errors import InputError
from ..views import Bounds, Job
from .images import IMAGE_SUFFIXES, find_with_suffix, load_pixels
from .photo import make_view
from .transforms import selected

POSES_FILE = "poses_bounds.npy"


def find_image_dir(root: Path) -> Path | None:
    """``root/images``, else the ``root/images_<n>`` with the smallest n, else None."""
    if (root / "images").is_dir():
        return root / "images"
    scaled = []
    for folder in root.glob("images_*"):
        match = re.fullmatch(r"images_(\d+)", folder.name)
        if match and folder.is_dir():
            scaled.append((int(match.group(1)), folder))
    return min(scaled)[1] if scaled else None


def photo_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (suffix .png / .jpg / .jpeg in any case), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_poses(path: Path) -> np.ndarray:
    """``poses_bounds.npy`` → (N, 17) float64, or :class:`InputError`."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} ({exc})", fix="write it with numpy.save as an (N, 17) array.") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 17 or len(data) == 0:
        raise InputError(
            f"{path} must hold an (N, 17) array (3x5 pose and hwf, near, far per photo), got shape {data.shape}",
            fix="check that it is an LLFF poses_bounds.npy file.",
        )
    if not np.all(np.isfinite(data[:, :15])):
        raise InputError(f"{path} holds non-finite poses", fix="recompute the poses (LLFF imgs2poses).")
    return data


def llff_camera(row: np.ndarray, name: str, index: int) -> Camera:
    """One ``poses_bounds`` row → the camera for the original ``height`` × ``width`` photo."""
    matrix = row[:15].reshape(3, 5)
    height, width, focal = matrix[:, 4]
    if not (height >= 1 and width >= 1 and focal > 0):
        raise InputError(
            f"poses_bounds row {index} has hwf = {matrix[:, 4].tolist()}; height, width and focal must be positive",
            view=name,
            index=index,
            fix="recompute the poses (LLFF imgs2poses).",
        )
    down, right, backwards, centre = matrix[:, 0], matrix[:, 1], matrix[:, 2], matrix[:, 3]
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, -backwards, centre
    try:
        w2c = np.linalg.inv(c2w)
    except np.linalg.LinAlgError:
        raise InputError(
            f"poses_bounds row {index} has a singular rotation",
            view=name,
            index=index,
            fix="recompute the poses (LLFF imgs2poses).",
        ) from None
    width, height = round(width), round(height)
    return Camera(w2c, intrinsics(focal, focal, width / 2, height / 2), width, height)


def load_llff(
    path,
    *,
    select: Iterable[int] | None = None,
    options: dict | None = None,
    bounds: Bounds | None = None,
) -> Job:
    """Read an LLFF dataset folder (or its ``poses_bounds.npy``) → :class:`Job` (not yet validated).

    ``select``: row indices to load, in that order (None: all). ``options`` become ``Job.options``; ``bounds``
    is passed through.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    poses_file = path if path.is_file() else path / POSES_FILE
    if not poses_file.is_file():
        raise InputError(f"no {POSES_FILE} in {root}", fix="point at an LLFF dataset folder.")
    rows = read_poses(poses_file)
    image_dir = find_image_dir(root)
    if image_dir is None:
        raise InputError(f"no images/ (or images_<n>/) folder in {root}", fix="put the photos in images/.")
    photos = photo_files(image_dir)
    if len(photos) != len(rows):
        raise InputError(
            f"{poses_file.name} has {len(rows)} poses but {image_dir} holds {len(photos)} photos",
            fix="keep exactly the photos the poses were computed from (rows follow the sorted file names).",
        )
    options = dict(options or {})
    masks = root / "masks"
    notes: list[str] = []
    views = []
    for index in selected(photos, select):
        photo = photos[index]
        name = photo.stem
        mask = find_with_suffix(masks / name)
        pixels = load_pixels(photo, options, mask_path=mask, view=name, index=index)
        camera = llff_camera(rows[index], name, index)
        views.append(make_view(name, pixels, camera, rescale=True, index=index, notes=notes))
    return Job(views=views, bounds=bounds, options=options, source=str(poses_file), warnings=notes)
