"""The dataset folder (docs/DATASET.md): ``index.json``, each object's ``transforms.json`` and image paths, what a
resumed run still has to render, and the object names of a folder of meshes. No bpy.

Every JSON file is written atomically (a temporary name, then a rename), so an interrupted run leaves either the
old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .png import write_atomic
from .rig import DEPTH_UNIT, RenderSettings, View

FORMAT = "gtr-dataset/1"
INDEX = "index.json"
TRANSFORMS = "transforms.json"
KINDS = ("rgba", "depth", "normal")
"""The image folders of an object, one file per view in each."""
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf")


class OutputError(Exception):
    """The output folder cannot hold a dataset (not a folder, not a dataset, unwritable, rendered with other
    settings); the message says what to do."""


@dataclass(frozen=True)
class Planned:
    """One object a run is asked for: its unique ``name`` (also its folder), ``source`` text, and for a mesh the
    file (``path``) or for a procedural object its ``index``."""

    name: str
    source: str
    path: Path | None = None
    index: int | None = None


def mesh_objects(folder: Path) -> list[Planned]:
    """One object per mesh file under ``folder`` (recursively, sorted by path).

    Name: a file alone in a sub-folder is named after that folder (``spot/spot_triangulated.obj`` → ``spot``),
    other files after their path without the suffix (``chairs/a.obj`` → ``chairs_a``); characters outside
    ``A-Za-z0-9._-`` become ``_``; names that still collide get the suffix (``a_obj``, ``a_ply``). ``source`` is the
    path relative to ``folder``'s parent (``meshes/spot/spot_triangulated.obj``).
    """
    files = sorted(_mesh_files(folder), key=lambda p: p.relative_to(folder).as_posix())
    per_folder: dict[Path, int] = {}
    for file in files:
        per_folder[file.parent] = per_folder.get(file.parent, 0) + 1
    names = []
    for file in files:
        relative = file.relative_to(folder)
        if file.parent != folder and per_folder[file.parent] == 1:
            stem = relative.parent.as_posix()
        else:
            stem = relative.with_suffix("").as_posix()
        names.append(_safe_name(stem))
    counts = {name: names.count(name) for name in names}
    names = [f"{name}_{file.suffix[1:].lower()}" if counts[name] > 1 else name for name, file in zip(names, files)]
    base = folder.parent
    return [Planned(name=name, source=file.relative_to(base).as_posix(), path=file) for name, file in zip(names, files)]


def _mesh_files(folder: Path) -> list[Path]:
    """Mesh files under ``folder``, following linked folders (each real folder once, so link loops end)."""
    found, seen = [], set()
    for current, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found += [Path(current) / n for n in names if Path(n).suffix.lower() in MESH_SUFFIXES]
    return [p for p in found if p.is_file()]


def procedural_objects(count: int, seed: int) -> list[Planned]:
    """The procedural objects ``procedural_0000`` … of a run, ``source`` "procedural seed S index i"."""
    return [Planned(name=procedural_name(i), source=f"procedural seed {seed} index {i}", index=i) for i in range(count)]


def procedural_name(index: int) -> str:
    """The dataset object name of procedural object ``index``: ``procedural_0003``."""
    return f"procedural_{index:04d}"


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "_")).lstrip(".")
    return name or "object"


def view_stem(index: int, views: int) -> str:
    """The file stem of view ``index``: ``007`` (at least 3 digits, more when there are 1000 views or more)."""
    return f"{index:0{max(3, len(str(views - 1)))}d}"


def view_files(folder: Path, index: int, views: int) -> dict[str, Path]:
    """The rgba / depth / normal files of view ``index`` in the object folder ``folder``."""
    stem = view_stem(index, views)
    return {kind: folder / kind / f"{stem}.png" for kind in KINDS}


def missing_views(folder: Path, views: int) -> list[int]:
    """The views of the object in ``folder`` lacking any of their files (files are written atomically, so a file
    that exists is complete)."""
    return [k for k in range(views) if not all(p.is_file() for p in view_files(folder, k, views).values())]


def transforms(settings: RenderSettings, views: list[View], done: list[int], bounds, source: str) -> dict:
    """The ``transforms.json`` content of an object with the views ``done`` written; ``bounds`` = (min, max).

    Beyond docs/DATASET.md's keys it holds ``render_settings`` (the settings and source that made the images), which
    a resumed run compares with its own.
    """
    per_frame_fov = settings.fov[0] != settings.fov[1]
    frames = []
    for k in done:
        files = view_files(Path(""), k, settings.views)
        frame = {
            "file_path": files["rgba"].as_posix(),
            "transform_matrix": [list(row) for row in views[k].matrix],
            "depth_file_path": files["depth"].as_posix(),
            "normal_file_path": files["normal"].as_posix(),
        }
        if per_frame_fov:
            frame["camera_angle_x"] = views[k].fov
        frames.append(frame)
    low, high = bounds
    return {
        "camera_angle_x": views[0].fov,
        "depth_unit_scale_factor": DEPTH_UNIT,
        "up_axis": "z",
        "bounds": {"min": [float(x) for x in low], "max": [float(x) for x in high]},
        "render_settings": {**settings.as_json(), "source": source},
        "frames": frames,
    }


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def open_output(root: Path) -> dict:
    """Make ``root`` ready for a dataset and return its index (a new, empty one is written when there is none).

    Raises :class:`OutputError` when ``root`` is a file, a non-empty folder that is not a dataset, holds an index
    that is not a ``gtr-dataset/1`` index, or cannot be written.
    """
    if root.exists() and not root.is_dir():
        raise OutputError(f"the output {root} is a file, not a folder: give a new or existing dataset folder")
    index_path = root / INDEX
    if root.is_dir() and not index_path.exists():
        leftovers = sorted(p.name for p in root.iterdir())
        if leftovers:
            shown = ", ".join(leftovers[:5]) + (" …" if len(leftovers) > 5 else "")
            raise OutputError(
                f"the output {root} is not empty and holds no {INDEX} ({shown}): it is not a dataset; give a new or "
                "empty folder, or a dataset folder to add to / resume"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".render-dataset-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to the output {root}: {error.strerror or error}") from None
    if not index_path.exists():
        index = {"format": FORMAT, "objects": []}
        write_json(index_path, index)
        return index
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        raise OutputError(f"cannot read {index_path} ({error}): repair or delete it") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("objects"), list):
        raise OutputError(f'{index_path} is not a dataset index (it needs "format": "{FORMAT}" and "objects": [...])')
    return index


def add_to_index(root: Path, index: dict, entry: dict) -> None:
    """Put ``entry`` (``name``, ``path``, ``views``, ``source``) into ``index`` (replacing one of the same name) and
    write it."""
    objects = index["objects"]
    for k, existing in enumerate(objects):
        if isinstance(existing, dict) and existing.get("name") == entry["name"]:
            objects[k] = entry
            break
    else:
        objects.append(entry)
    write_json(root / INDEX, index)


def read_transforms(folder: Path) -> dict | None:
    """The object's ``transforms.json`` when it exists and parses, else None."""
    try:
        data = json.loads((folder / TRANSFORMS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def settings_conflict(folder: Path, settings: RenderSettings, source: str) -> str | None:
    """Why the object in ``folder`` cannot be resumed with ``settings`` (None when it can, or is new)."""
    data = read_transforms(folder)
    if data is None:
        return None
    before = data.get("render_settings")
    now = {**settings.as_json(), "source": source}
    if before == now:
        return None
    if not isinstance(before, dict):
        return f"{folder.name}: its {TRANSFORMS} was not written by render-dataset (no render_settings)"
    changed = ", ".join(f"{key} {before.get(key)!r} → {now[key]!r}" for key in now if before.get(key) != now[key])
    return f"{folder.name}: rendered with other settings ({changed})"
