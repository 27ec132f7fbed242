"""Training datasets (format in docs/DATASET.md): the index, one object's views in the canonical frame, the checker.

An object folder is a ``transforms.json`` input like any other (read by :mod:`backend.inputs.transforms`); what
training adds is its ``bounds`` and ``up_axis`` (the canonical frame comes from them exactly as the ``gtr`` method
builds it at inference, see :func:`backend.frame.frame_for_bounds`) and the optional normal maps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cameras import Camera
from .errors import InputError
from .frame import CanonicalFrame, frame_for_bounds
from .views import Bounds

FORMAT = "gtr-dataset/1"
INDEX = "index.json"
OBJECT_EXTENT = 0.85
"""Half-size of an object's largest side in the canonical frame (the ``gtr`` method's ``RigConfig.object_extent``)."""


@dataclass(frozen=True)
class ObjectEntry:
    """One object of the index: ``name``, its folder, the number of views written, where it came from."""

    name: str
    folder: Path
    views: int
    source: str = ""


@dataclass
class ObjectViews:
    """All views of one object, square ``size`` × ``size``, in the canonical frame (Y up, object in [-1, 1]³).

    ``rgb`` (V, S, S, 3) float32 composited on white; ``mask`` (V, S, S) coverage; ``depth`` (V, S, S) camera-z
    depth in canonical units, 0 on background, or None; ``normals`` (V, S, S, 3) canonical-frame unit normals, 0
    on background, or None; ``cameras`` the V canonical cameras.
    """

    name: str
    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray | None
    normals: np.ndarray | None
    cameras: list[Camera]


def read_index(root: str | Path) -> list[ObjectEntry]:
    """The objects listed in ``root/index.json`` (raises :class:`InputError` when the index itself is unusable)."""
    root = Path(root)
    path = root / INDEX
    if not path.is_file():
        raise InputError(f"{root} has no {INDEX}", fix="point at a dataset folder written by render-dataset.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} ({exc})", fix="re-run render-dataset to rewrite the index.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} index", fix=f'the index needs "format": "{FORMAT}".')
    entries, seen = [], set()
    for k, item in enumerate(data.get("objects") or []):
        if not isinstance(item, dict) or not item.get("path") or not item.get("name"):
            raise InputError(f"{path}: object #{k} needs a 'name' and a 'path'", fix="re-run render-dataset.")
        if item["name"] in seen:
            raise InputError(f"{path}: object name {item['name']!r} appears twice", fix="names must be unique.")
        seen.add(item["name"])
        entries.append(ObjectEntry(str(item["name"]), root / str(item["path"]), int(item.get("views", 0)),
                                   str(item.get("source", ""))))
    return entries


def object_frame(data: dict, where: Path) -> CanonicalFrame:
    """The canonical frame of an object from its transforms.json ``bounds`` and ``up_axis``."""
    from .gtr.rig import up_rotation

    bounds = data.get("bounds")
    try:
        lo, hi = np.asarray(bounds["min"], dtype=np.float64), np.asarray(bounds["max"], dtype=np.float64)
        box = Bounds(centre=(lo + hi) / 2, size=hi - lo)
    except (TypeError, KeyError, ValueError):
        raise InputError(f"{where} needs 'bounds': {{'min': [x, y, z], 'max': [x, y, z]}}",
                         fix="re-render the object with render-dataset.") from None
    up = data.get("up_axis", "z")
    if up not in ("y", "z"):
        raise InputError(f"{where}: up_axis must be 'y' or 'z', got {up!r}", fix='write "up_axis": "z".')
    return frame_for_bounds(box, OBJECT_EXTENT, up_rotation(up))


def read_normals(path: Path) -> np.ndarray:
    """A normal map PNG (8- or 16-bit RGB, n stored as (n + 1) / 2) → (H, W, 3) float32 normals, 0 on background."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] < 3:
        raise InputError(f"cannot read normal map {path}", fix="write a 16-bit RGB PNG.")
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    rgb = image[..., 2::-1].astype(np.float32) / scale  # OpenCV stores BGR
    empty = ~rgb.any(axis=-1)
    n = rgb * 2 - 1
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8)
    n[empty] = 0
    return n


def load_object(entry: ObjectEntry, size: int) -> ObjectViews:
    """Read every view of ``entry`` and move it into the canonical frame at ``size`` × ``size`` pixels."""
    from .gtr.rig import resize_image, square_view
    from .inputs.transforms import load_transforms

    path = entry.folder / "transforms.json"
    if not path.is_file():
        raise InputError(f"{entry.folder} has no transforms.json", fix="re-render the object.")
    data = json.loads(path.read_text())
    frame = object_frame(data, path)
    job = load_transforms(path, options={"mask_source": "alpha"})
    views = [square_view(frame.view_to_canonical(v), size) for v in job.views]
    frames = data["frames"]
    normals = None
    if all(f.get("normal_file_path") for f in frames):
        maps = []
        for f in frames:
            n = read_normals(path.parent / f["normal_file_path"]) @ frame.rotation.T.astype(np.float32)
            maps.append(resize_image(n, size, "nearest"))  # square images with the principal point at the centre
        normals = np.stack(maps).astype(np.float32)
    has_depth = all(v.depth is not None for v in views)
    return ObjectViews(
        name=entry.name,
        rgb=np.stack([v.rgb for v in views]).astype(np.float32),
        mask=np.stack([v.mask for v in views]).astype(np.float32),
        depth=np.stack([v.depth for v in views]).astype(np.float32) if has_depth else None,
        normals=normals,
        cameras=[v.camera for v in views],
    )


# ------------------------------------------------------------------------------------------------------ checking


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: the good objects' names and, per broken object, why."""

    good: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken and bool(self.good)


def check_object(entry: ObjectEntry) -> list[str]:
    """Read one object the way training does; returns warnings, raises :class:`InputError` when it is broken."""
    data_path = entry.folder / "transforms.json"
    views = load_object(entry, 32)
    data = json.loads(data_path.read_text())
    warnings = []
    if entry.views and entry.views != len(views.cameras):
        warnings.append(f"{entry.name}: the index says {entry.views} views, transforms.json has "
                        f"{len(views.cameras)}")
    if len(views.cameras) < 2:
        raise InputError(f"{entry.name} has {len(views.cameras)} view(s); training needs at least 2",
                         fix="re-render the object with more views.")
    empty = [k for k, m in enumerate(views.mask) if m.max() < 0.5]
    if empty:
        raise InputError(f"{entry.name}: the object is not visible in view(s) {empty[:8]}",
                         fix="check the object's bounds and cameras, or re-render it.")
    if views.depth is None and any(f.get("depth_file_path") for f in data["frames"]):
        warnings.append(f"{entry.name}: only some frames have depth; depth is not used")
    for name, values in (("depth", views.depth), ("normals", views.normals)):
        if values is not None and not np.isfinite(values).all():
            raise InputError(f"{entry.name}: its {name} maps hold non-finite values", fix="re-render the object.")
    return warnings


def check_dataset(root: str | Path, progress: Callable[[int, int, str], None] | None = None) -> CheckReport:
    """Check every object of the dataset at ``root``; a broken object is recorded and the check goes on."""
    report = CheckReport()
    entries = read_index(root)
    if not entries:
        report.warnings.append("the index lists no objects")
    for k, entry in enumerate(entries):
        if progress is not None:
            progress(k, len(entries), entry.name)
        try:
            report.warnings.extend(check_object(entry))
            report.good.append(entry.name)
        except InputError as exc:
            report.broken[entry.name] = str(exc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.broken[entry.name] = f"{type(exc).__name__}: {exc}"
    return report
