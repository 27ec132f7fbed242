"""Loading a job: ``job.json``, ``transforms*.json``, ``cam_XXX.txt`` folders, COLMAP and LLFF → a validated Job.

:func:`load_job` accepts

- a ``job.json`` file (the canonical format, :mod:`backend.inputs.job_file`);
- a ``transforms*.json`` file (nerf_synthetic / instant-ngp / nerfstudio, :mod:`backend.inputs.transforms`);
- any other ``.json`` file holding ``"views"`` (job format) or ``"frames"`` (transforms format);
- a COLMAP ``cameras``/``images`` ``.bin``/``.txt`` file (its model folder is read) or ``poses_bounds.npy``;
- a folder holding ``job.json``, else ``transforms_train.json`` / ``transforms.json``, else ``cam_*.txt``
  files with their ``rgb_*`` images (:mod:`backend.inputs.gtr_cams`), else a COLMAP sparse model (in the folder,
  ``sparse/0`` or ``sparse``; photos from ``images/``, :mod:`backend.inputs.colmap`), else ``poses_bounds.npy``
  (LLFF, :mod:`backend.inputs.llff`).

Importers whose formats carry lens distortion (transforms, COLMAP) remove it (:mod:`backend.inputs.undistort`);
every importer turns JPEGs with an EXIF orientation tag upright together with their cameras
(:mod:`backend.inputs.photo` states the rule).

``options_override`` replaces the job's options (job.json ``options``; importers have none of their own)
before images and masks are read. Its optional ``"bounds"`` entry (same form as job.json's ``bounds``) sets
the job's bounds instead of becoming an option. Option values are checked against the registry
(:mod:`backend.options`) before any image is read; unknown keys become ``Job.warnings``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..options import check_options
from ..views import Job
from .colmap import find_model, load_colmap
from .gtr_cams import find_cam_files, load_gtr_folder
from .job_file import load_job_file, parse_bounds, read_json
from .llff import POSES_FILE, load_llff
from .transforms import load_transforms
from .validate import check_output_dir, validate_job

__all__ = [
    "check_output_dir",
    "load_colmap",
    "load_gtr_folder",
    "load_job",
    "load_job_file",
    "load_llff",
    "load_transforms",
    "validate_job",
]

_FIX = (
    "point at a job.json, a transforms*.json, or a folder holding one of them, cam_XXX.txt files with "
    "rgb_XXX.png images, a COLMAP sparse model (cameras + images .bin/.txt, also under sparse/0 or sparse) with an "
    "images/ folder, or an LLFF poses_bounds.npy with images/."
)
COLMAP_FILES = {f"{kind}{suffix}" for kind in ("cameras", "images") for suffix in (".bin", ".txt")}


def load_job(path, *, options_override: dict | None = None, validate: bool = True) -> Job:
    """Load the job at ``path`` (see the module docstring) and, unless ``validate`` is False, validate it."""
    path = Path(path).expanduser()
    override = dict(options_override or {})
    bounds = parse_bounds(override.pop("bounds")) if override.get("bounds") is not None else None
    override.pop("bounds", None)
    checked = check_options(override, "the options override")  # before any image is read
    job = _dispatch(path, checked.values, bounds)
    job.warnings[:0] = checked.warnings
    if bounds is not None:
        job.bounds = bounds
    return validate_job(job) if validate else job


def _dispatch(path: Path, override: dict, bounds) -> Job:
    if path.is_dir():
        if (path / "job.json").is_file():
            return load_job_file(path / "job.json", override)
        for name in ("transforms_train.json", "transforms.json"):
            if (path / name).is_file():
                return load_transforms(path / name, options=override, bounds=bounds)
        if find_cam_files(path):
            return load_gtr_folder(path, options=override, bounds=bounds)
        if find_model(path) is not None:
            return load_colmap(path, options=override, bounds=bounds)
        if (path / POSES_FILE).is_file():
            return load_llff(path, options=override, bounds=bounds)
        raise InputError(
            f"{path} holds no job.json, transforms_train.json, transforms.json, cam_*.txt, COLMAP model "
            f"(cameras + images .bin/.txt, there or in sparse/0 or sparse) or {POSES_FILE}",
            fix=_FIX,
        )
    if not path.exists():
        raise InputError(f"job not found: {path}", fix=_FIX)
    if path.name in COLMAP_FILES:
        return load_colmap(path.parent, options=override, bounds=bounds)
    if path.name == POSES_FILE:
        return load_llff(path, options=override, bounds=bounds)
    if path.suffix.lower() != ".json":
        raise InputError(f"cannot tell what kind of job {path.name} is", fix=_FIX)
    if path.name.startswith("transforms"):
        return load_transforms(path, options=override, bounds=bounds)
    if path.name == "job.json":
        return load_job_file(path, override)
    data = read_json(path)
    if "views" in data:
        return load_job_file(path, override)
    if "frames" in data:
        return load_transforms(path, options=override, bounds=bounds)
    raise InputError(f"{path.name} has neither 'views' (job.json) nor 'frames' (transforms.json)", fix=_FIX)
