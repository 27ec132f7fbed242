"""COLMAP sparse models: ``cameras`` + ``images`` as text (``.txt``) or binary (``.bin``), with their photos.

Where things are (:func:`find_model`, :func:`find_image_dir`):

- The model: a folder holding ``cameras.bin`` + ``images.bin`` or ``cameras.txt`` + ``images.txt`` (binary wins
  when both are there, as in COLMAP), given directly or found under ``sparse/0`` or ``sparse`` of the folder given.
- The photos: the ``images`` argument, else the first ``images/`` folder in the model folder or up to two folders
  above it (``project/images`` for ``project/sparse/0``; ``dense/images`` in COLMAP's undistorted workspace).
  ``NAME`` in the images file is relative to that folder.
- Masks (optional): a ``masks/`` folder next to the photos' folder, holding ``NAME.png`` (COLMAP's own mask naming)
  or a file with the photo's path and stem and any image suffix; > 0.5 = object, chosen per ``mask_source``.

Conventions, as COLMAP's documentation states them ("Output Format"; ``src/colmap/sensor/models.h``):

- Pose: ``QW QX QY QZ TX TY TZ`` is the world-to-camera transform: a Hamilton unit quaternion R and a translation
  t, camera axes x right, y down, z forward. That is this project's ``world_to_camera`` = [R | t] as it is.
- Intrinsics: the image's upper-left corner is (0, 0) and the upper-left pixel's centre is (0.5, 0.5), the
  pixel-corner convention of :mod:`backend.cameras` (a centred principal point is (W/2, H/2)), so ``cx``, ``cy``
  are used unchanged.
- Camera models and their ``PARAMS``: SIMPLE_PINHOLE ``f cx cy``; PINHOLE ``fx fy cx cy``; SIMPLE_RADIAL
  ``f cx cy k``; RADIAL ``f cx cy k1 k2``; OPENCV ``fx fy cx cy k1 k2 p1 p2``; OPENCV_FISHEYE
  ``fx fy cx cy k1 k2 k3 k4``; FULL_OPENCV ``fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6``. Lens distortion is removed
  while loading (:mod:`backend.inputs.undistort`). Other models raise :class:`InputError` (COLMAP's
  ``image_undistorter`` turns any model into PINHOLE photos, which load directly).
- Binary files are little-endian: cameras ``uint64 count``, then per camera ``uint32 id, int32 model, uint64
  width, uint64 height, float64 params[]``; images ``uint64 count``, then per image ``uint32 id, float64 qw qx
  qy qz tx ty tz, uint32 camera_id, NAME\\0, uint64 n``, then n × (float64 x, float64 y, int64 point3D_id).

Photos: COLMAP ignores EXIF orientation, so cameras describe the stored pixels (see :mod:`backend.inputs.photo`);
a downscaled copy of the photos (same aspect ratio, e.g. an ``images_2`` folder given as ``images``) gets K scaled
to it. Views are sorted by ``NAME`` and named after it without its suffix. 3D points, rigs and frames are not read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..cameras import Camera, intrinsics
from ..errors import InputError
from ..views import Bounds, Job
from .images import find_with_suffix, load_pixels
from .photo import make_view
from .transforms import selected
from .undistort import Distortion

MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
}
"""COLMAP model id → (name, number of PARAMS), for the models read here."""
MODEL_IDS = {name: model_id for model_id, (name, _) in MODELS.items()}
OTHER_MODELS = (
    "FOV",
    "SIMPLE_RADIAL_FISHEYE",
    "RADIAL_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "RAD_TAN_THIN_PRISM_FISHEYE",
    "SIMPLE_DIVISION",
    "DIVISION",
    "SIMPLE_FISHEYE",
    "FISHEYE",
    "EUCM",
    "EQUIRECTANGULAR",
)
"""COLMAP's other models, by id from 7 on (named in the error)."""
_UNDISTORT_FIX = (
    "run COLMAP's image_undistorter (it writes PINHOLE cameras and undistorted photos) and load its output folder."
)


def _model_files(folder: Path) -> tuple[Path, Path] | None:
    for suffix in (".bin", ".txt"):
        cameras, images = folder / f"cameras{suffix}", folder / f"images{suffix}"
        if cameras.is_file() and images.is_file():
            return cameras, images
    return None


def find_model(path) -> Path | None:
    """The sparse model folder for ``path`` (the model itself, or a project holding ``sparse/0`` or ``sparse``)."""
    path = Path(path)
    for folder in (path, path / "sparse" / "0", path / "sparse"):
        if folder.is_dir() and _model_files(folder):
            return folder
    return None


def find_image_dir(model: Path) -> Path | None:
    """The first ``images/`` folder in ``model`` or up to two folders above it."""
    for folder in (model, model.parent, model.parent.parent):
        if (folder / "images").is_dir():
            return folder / "images"
    return None


def _error(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}", fix="re-export the model from COLMAP (File > Export model / as text).")


def _camera_entry(path: Path, camera_id: int, model, width, height, params) -> tuple:
    if isinstance(model, int):
        if model not in MODELS:
            name = OTHER_MODELS[model - 7] if 7 <= model < 7 + len(OTHER_MODELS) else f"model id {model}"
            raise InputError(
                f"{path}: camera {camera_id} uses COLMAP's {name} model, not supported", fix=_UNDISTORT_FIX
            )
        model = MODELS[model][0]
    if model not in MODEL_IDS:
        raise InputError(f"{path}: camera {camera_id} uses COLMAP's {model} model, not supported", fix=_UNDISTORT_FIX)
    count = MODELS[MODEL_IDS[model]][1]
    if len(params) != count:
        raise _error(path, f"camera {camera_id} ({model}) needs {count} parameters, got {len(params)}")
    if width <= 0 or height <= 0:
        raise _error(path, f"camera {camera_id} has size {width}x{height}")
    return model, int(width), int(height), tuple(float(p) for p in params)


def read_cameras(path) -> dict[int, tuple]:
    """``cameras.txt`` / ``cameras.bin`` → {camera_id: (model name, width, height, params)}."""
    path = Path(path)
    cameras = {}
    if path.suffix == ".bin":
        data = _read_bytes(path)
        (count,), offset = _unpack(path, data, "<Q", 0)
        for _ in range(count):
            (camera_id, model, width, height), offset = _unpack(path, data, "<IiQQ", offset)
            if model not in MODELS:
                _camera_entry(path, camera_id, model, width, height, ())  # raises: unknown parameter count
            params, offset = _unpack(path, data, f"<{MODELS[model][1]}d", offset)
            cameras[camera_id] = _camera_entry(path, camera_id, model, width, height, params)
        return cameras
    for line in _text_lines(path):
        tokens = line.split()
        try:
            camera_id, model, width, height = int(tokens[0]), tokens[1].upper(), int(tokens[2]), int(tokens[3])
            params = [float(t) for t in tokens[4:]]
        except (IndexError, ValueError):
            raise _error(path, f"cannot read camera line {line!r}") from None
        cameras[camera_id] = _camera_entry(path, camera_id, model, width, height, params)
    return cameras


def read_images(path) -> list[tuple[str, np.ndarray, int]]:
    """``images.txt`` / ``images.bin`` → [(NAME, world_to_camera (4, 4), camera_id)], in file order."""
    path = Path(path)
    images = []
    if path.suffix == ".bin":
        data = _read_bytes(path)
        (count,), offset = _unpack(path, data, "<Q", 0)
        for _ in range(count):
            (_, *pose, camera_id), offset = _unpack(path, data, "<I7dI", offset)
            end = data.find(b"\0", offset)
            if end < 0:
                raise _error(path, "truncated image name")
            name = data[offset:end].decode("utf-8", errors="replace")
            (points,), offset = _unpack(path, data, "<Q", end + 1)
            offset += 24 * points
            images.append((name, world_to_camera(pose[:4], pose[4:]), camera_id))
        if offset > len(data):
            raise _error(path, "the file is truncated")
        return images
    lines = _text_lines(path, keep_blank=True)
    position = 0
    while position < len(lines):
        tokens = lines[position].split()
        position += 1
        if not tokens:
            continue
        try:
            pose, camera_id, name = [float(t) for t in tokens[1:8]], int(tokens[8]), " ".join(tokens[9:])
        except (IndexError, ValueError):
            raise _error(path, f"cannot read image line {lines[position - 1]!r}") from None
        if len(pose) != 7 or not name:
            raise _error(path, f"cannot read image line {lines[position - 1]!r}")
        images.append((name, world_to_camera(pose[:4], pose[4:]), camera_id))
        if position < len(lines) and not _looks_like_image_line(lines[position]):
            position += 1  # its POINTS2D line (empty when it has no points)
    return images


def _looks_like_image_line(line: str) -> bool:
    tokens = line.split()
    if len(tokens) < 10:
        return False
    try:
        float(tokens[9])
    except ValueError:
        return True  # a name, not a coordinate
    return False


def world_to_camera(quaternion, translation) -> np.ndarray:
    """COLMAP's (QW, QX, QY, QZ) and (TX, TY, TZ) → (4, 4) world-to-camera (the quaternion is normalised)."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, np.asarray(translation, dtype=np.float64)
    return matrix


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _error(path, f"cannot read ({exc})") from None


def _unpack(path: Path, data: bytes, layout: str, offset: int) -> tuple[tuple, int]:
    size = struct.calcsize(layout)
    if offset + size > len(data):
        raise _error(path, "the file is truncated")
    return struct.unpack_from(layout, data, offset), offset + size


def _text_lines(path: Path, keep_blank: bool = False) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(path, f"cannot read ({exc})") from None
    lines = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    return lines if keep_blank else [line for line in lines if line]


def lens(model: str, params: tuple) -> tuple[np.ndarray, Distortion | None]:
    """COLMAP intrinsics → (K (3, 3), distortion or None for the pinhole models)."""
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        f, cx, cy, *k = params
        K = intrinsics(f, f, cx, cy)
        return K, Distortion("opencv", tuple(k)) if k else None
    fx, fy, cx, cy, *extra = params
    K = intrinsics(fx, fy, cx, cy)
    if model == "PINHOLE":
        return K, None
    if model == "OPENCV_FISHEYE":
        return K, Distortion("fisheye", tuple(extra))
    k1, k2, p1, p2, *more = extra  # OPENCV, FULL_OPENCV
    return K, Distortion("opencv", (k1, k2, *more), (p1, p2))


def find_mask(masks: Path, name: str) -> Path | None:
    """The mask for photo ``name`` in ``masks``: ``NAME.png`` (COLMAP's naming), else the same stem with an
    image suffix."""
    if not masks.is_dir():
        return None
    colmap_name = masks / f"{name}.png"
    return colmap_name if colmap_name.is_file() else find_with_suffix(masks / Path(name).with_suffix(""))


def load_colmap(
    path,
    *,
    images=None,
    select: Iterable[int] | None = None,
    options: dict | None = None,
    bounds: Bounds | None = None,
) -> Job:
    """Read a COLMAP sparse model with its photos → :class:`Job` (not yet validated; see the module docstring).

    ``path``: the model folder or a project folder holding ``sparse/0`` or ``sparse``. ``images``: the photos'
    folder (default: found next to the model). ``select``: indices into the views sorted by name (None: all).
    ``options`` become ``Job.options``; ``bounds`` is passed through.
    """
    path = Path(path)
    model = find_model(path)
    if model is None:
        raise InputError(
            f"no COLMAP model in {path} (looked for cameras + images .bin or .txt there, in sparse/0 and in sparse)",
            fix="point at the folder holding cameras.bin and images.bin (or the .txt files), or at its project.",
        )
    cameras_file, images_file = _model_files(model)
    cameras = read_cameras(cameras_file)
    entries = sorted(read_images(images_file), key=lambda entry: entry[0])
    if not entries:
        raise InputError(f"{images_file} lists no registered images", fix="run the reconstruction again.")
    image_dir = Path(images) if images is not None else find_image_dir(model)
    if image_dir is None or not image_dir.is_dir():
        raise InputError(
            f"no images folder for the COLMAP model in {model} (looked in it and up to two folders above it)",
            fix="put the photos in an images/ folder beside sparse/, or pass the photos' folder.",
        )
    chosen = selected(entries, select)
    options = dict(options or {})
    notes: list[str] = []
    views = []
    for index in chosen:
        name, w2c, camera_id = entries[index]
        view_name = Path(name).with_suffix("").as_posix()
        if camera_id not in cameras:
            raise _error(images_file, f"image {name} refers to camera {camera_id}, which {cameras_file.name} lacks")
        model_name, width, height, params = cameras[camera_id]
        K, distortion = lens(model_name, params)
        pixels = load_pixels(
            image_dir / name,
            options,
            mask_path=find_mask(image_dir.parent / "masks", name),
            view=view_name,
            index=index,
        )
        camera = Camera(w2c, K, width, height)
        views.append(
            make_view(view_name, pixels, camera, distortion=distortion, rescale=True, index=index, notes=notes)
        )
    return Job(views=views, bounds=bounds, options=options, source=str(model), warnings=notes)
