"""``transforms*.json`` importer: nerf_synthetic, instant-ngp and nerfstudio datasets.

What is read (keys at the top level apply to every frame; the same keys inside a frame override them):

- ``frames[i].transform_matrix``: 4×4 (or 3×4) OpenGL camera-to-world (x right, y up, z backward), converted
  with :func:`backend.cameras.opengl_c2w_to_w2c`.
- ``frames[i].file_path``: the image, relative to the transforms file's folder, with or without extension
  (without: ``.png``, ``.jpg``, ``.jpeg`` are tried in that order).
- Intrinsics: ``fl_x`` / ``fl_y`` / ``cx`` / ``cy`` / ``w`` / ``h`` (instant-ngp, nerfstudio), or
  ``camera_angle_x`` (and optionally ``camera_angle_y``) in radians (nerf_synthetic): fx = 0.5·W / tan(angle_x/2),
  fy = 0.5·H / tan(angle_y/2) or fx, cx = W/2, cy = H/2. ``fl_*`` win over ``camera_angle_*``; a missing
  ``fl_y`` equals ``fl_x``; missing ``cx``/``cy`` mean the image centre; missing ``w``/``h`` mean the image's
  size. Principal points use the pixel-corner convention (centre = W/2), as these formats do.
- ``camera_model``: ``PINHOLE``, ``SIMPLE_PINHOLE``, ``OPENCV``, ``SIMPLE_RADIAL``, ``RADIAL`` take the
  radial-tangential coefficients ``k1`` ``k2`` ``k3`` ``p1`` ``p2`` (missing = 0; a non-zero ``k4`` is an error,
  as nerfstudio's r⁸ term and OpenCV's rational k4 differ); ``OPENCV_FISHEYE`` (nerfstudio) or ``"is_fisheye":
  true`` (instant-ngp) takes the fisheye ``k1``..``k4``. Lens distortion is removed while loading
  (:mod:`backend.inputs.undistort`, which says which pinhole camera the view then gets). ``FISHEYE``,
  ``EQUIRECTANGULAR`` and other models raise :class:`InputError`.
- ``frames[i].mask_path`` (nerfstudio, optional): greyscale mask, > 0.5 = object.
- ``frames[i].depth_file_path`` (optional): ``.npy`` in world units, or a 16-bit PNG scaled by
  ``depth_unit_scale_factor`` (top level, default 0.001).
- Ignored: instant-ngp ``aabb_scale`` / ``scale`` / ``offset`` (they only place the scene in instant-ngp's own
  unit cube; cameras are used in the file's world units), nerfstudio ``applied_transform``, ``rotation``.

Views are named after ``file_path``'s stem; a view's index in messages is its frame's position in the file.
Cameras describe the images' stored pixels; JPEGs with an EXIF orientation tag are turned upright with their
camera (:mod:`backend.inputs.photo`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..cameras import Camera, focal_from_fov, intrinsics, opengl_c2w_to_w2c
from ..errors import InputError
from ..views import Bounds, Job
from .images import find_with_suffix, load_pixels
from .job_file import parse_matrix, read_json, repeated_images, resolve
from .photo import make_view
from .undistort import Distortion

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
PANORAMIC_MODELS = (
    "FISHEYE",
    "EQUIRECTANGULAR",
    "SIMPLE_RADIAL_FISHEYE",
    "RADIAL_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "FOV",
    "SPHERICAL",
    "OMNIDIRECTIONAL",
)
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
INTRINSIC_KEYS = (
    "camera_angle_x",
    "camera_angle_y",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "camera_model",
    "is_fisheye",
    *DISTORTION_KEYS,
)


def find_transforms_file(path, split: str | None = None) -> Path:
    """The transforms file for ``path`` (a file or a folder) and an optional ``split`` ("train", "test", ...).

    A folder gives ``transforms_<split>.json`` when ``split`` is set, else ``transforms_train.json``, else
    ``transforms.json``. A file with ``split`` set gives its sibling ``transforms_<split>.json``.
    """
    path = Path(path)
    if path.is_dir():
        names = [f"transforms_{split}.json"] if split else ["transforms_train.json", "transforms.json"]
        for name in names:
            if (path / name).is_file():
                return path / name
        raise InputError(f"no {' or '.join(names)} in {path}", fix="point at the dataset folder or its json file.")
    if split:
        path = path.with_name(f"transforms_{split}.json")
    if not path.is_file():
        raise InputError(f"transforms file not found: {path}", fix="check the path and the split name.")
    return path


def find_image(base: Path, file_path, view: str | None, index: int) -> Path:
    """``file_path`` relative to ``base``; when it does not exist as written, try the usual image suffixes."""
    path = resolve(base, file_path, "file_path", view, index)
    if path.is_file():
        return path
    return find_with_suffix(path) or path  # reading a missing one raises the "not found" InputError


def _number(params: dict, key: str, name: str, index: int) -> float:
    try:
        return float(params[key])
    except (TypeError, ValueError):
        raise InputError(
            f"'{key}' must be a number, got {params[key]!r}", view=name, index=index, fix=f"write '{key}' as a number."
        ) from None


def check_model(params: dict, name: str, index: int) -> None:
    """Raise :class:`InputError` for panoramic / unknown ``camera_model`` values."""
    model = str(params.get("camera_model", "PINHOLE")).upper()
    if model in PANORAMIC_MODELS:
        raise InputError(
            f"camera_model {model} (panoramic / fisheye) is not supported",
            view=name,
            index=index,
            fix="undistort or re-render the images as perspective (PINHOLE) views.",
        )
    if model not in PINHOLE_MODELS + FISHEYE_MODELS:
        raise InputError(
            f"unsupported camera_model {model!r}",
            view=name,
            index=index,
            fix=f"use one of {', '.join(PINHOLE_MODELS + FISHEYE_MODELS)}.",
        )


def lens_distortion(params: dict, name: str, index: int) -> Distortion | None:
    """The frame's lens distortion (see the module docstring), or None when every coefficient is 0."""
    values = {key: _number(params, key, name, index) if params.get(key) is not None else 0.0 for key in DISTORTION_KEYS}
    fisheye = str(params.get("camera_model", "")).upper() in FISHEYE_MODELS or params.get("is_fisheye") is True
    if fisheye:
        if values["p1"] or values["p2"]:
            raise InputError(
                "a fisheye camera has no tangential terms, but p1/p2 are set",
                view=name,
                index=index,
                fix="remove p1 and p2, or use camera_model OPENCV.",
            )
        return Distortion("fisheye", tuple(values[k] for k in ("k1", "k2", "k3", "k4")))
    if values["k4"]:
        raise InputError(
            "k4 is set on a pinhole (radial-tangential) camera; nerfstudio reads it as an r⁸ term, OpenCV as a "
            "rational one, so it is ambiguous",
            view=name,
            index=index,
            fix="undistort the images with the tool that calibrated them, or remove k4 if it is 0 in effect.",
        )
    distortion = Distortion("opencv", (values["k1"], values["k2"], values["k3"]), (values["p1"], values["p2"]))
    return None if distortion.is_identity else distortion


def _camera(params: dict, c2w, width: int, height: int, name: str, index: int) -> Camera:
    if "fl_x" in params:
        fx = _number(params, "fl_x", name, index)
        fy = _number(params, "fl_y", name, index) if "fl_y" in params else fx
    elif "camera_angle_x" in params:
        fx = focal_from_fov(_number(params, "camera_angle_x", name, index), width)
        fy = (
            focal_from_fov(_number(params, "camera_angle_y", name, index), height) if "camera_angle_y" in params else fx
        )
    else:
        raise InputError(
            "no focal length (neither 'fl_x' nor 'camera_angle_x')",
            view=name,
            index=index,
            fix="add 'fl_x' (pixels) or 'camera_angle_x' (radians) to the transforms file.",
        )
    cx = _number(params, "cx", name, index) if "cx" in params else width / 2
    cy = _number(params, "cy", name, index) if "cy" in params else height / 2
    c2w = parse_matrix(c2w, 4, "transform_matrix", name, index)
    try:
        w2c = opengl_c2w_to_w2c(c2w)
    except np.linalg.LinAlgError:
        raise InputError(
            "transform_matrix is singular, not a rigid transform",
            view=name,
            index=index,
            fix="write a rotation + translation camera-to-world matrix.",
        ) from None
    return Camera(w2c, intrinsics(fx, fy, cx, cy), width, height)


def selected(frames: list, select: Iterable[int] | None) -> list[int]:
    """Checked positions in ``frames`` for ``select`` (indices, negative ones from the end); None: all of them."""
    if select is None:
        return list(range(len(frames)))
    chosen = []
    for i in select:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(frames) <= i < len(frames):
            raise InputError(
                f"view index {i!r} is out of range (there are {len(frames)} views to choose from)",
                fix=f"select indices from 0 to {len(frames) - 1}.",
            )
        chosen.append(int(i) % len(frames))
    return chosen


def load_transforms(
    path,
    *,
    split: str | None = None,
    select: Iterable[int] | None = None,
    options: dict | None = None,
    bounds: Bounds | None = None,
) -> Job:
    """Read a transforms file (or a dataset folder, see :func:`find_transforms_file`) → :class:`Job`.

    ``select``: frame indices (positions in the file) to load, in that order; None loads every frame.
    ``options`` become ``Job.options`` (``mask_source`` etc. are applied while loading); ``bounds`` is passed
    through. The job is not validated: call :func:`backend.inputs.validate.validate_job` (``load_job`` does).
    """
    path = find_transforms_file(path, split)
    data = read_json(path)
    options = dict(options or {})
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path} has no 'frames'", fix='a transforms file lists its images under "frames".')
    top = {k: data[k] for k in INTRINSIC_KEYS if k in data}
    depth_scale = data.get("depth_unit_scale_factor")
    notes: list[str] = []
    views, images = [], []
    for index in selected(frames, select):
        frame = frames[index]
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise InputError(
                f"frame #{index} needs 'file_path' and 'transform_matrix'", index=index, fix="add both to the frame."
            )
        name = Path(str(frame["file_path"])).stem
        params = {**top, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}}
        check_model(params, name, index)
        image = find_image(path.parent, frame["file_path"], name, index)
        mask = resolve(path.parent, frame["mask_path"], "mask_path", name, index) if frame.get("mask_path") else None
        depth = frame.get("depth_file_path")
        depth = resolve(path.parent, depth, "depth_file_path", name, index) if depth else None
        pixels = load_pixels(
            image, options, mask_path=mask, depth_path=depth, depth_scale=depth_scale, view=name, index=index
        )
        width = round(_number(params, "w", name, index)) if "w" in params else pixels.width
        height = round(_number(params, "h", name, index)) if "h" in params else pixels.height
        camera = _camera(params, frame["transform_matrix"], width, height, name, index)
        distortion = lens_distortion(params, name, index)
        views.append(make_view(name, pixels, camera, distortion=distortion, index=index, notes=notes))
        images.append(image)
    notes[:0] = repeated_images(images, [v.name for v in views])
    return Job(views=views, bounds=bounds, options=options, source=str(path), warnings=notes)
