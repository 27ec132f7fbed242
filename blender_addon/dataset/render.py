"""``render-dataset``: each planned object into its folder of RGBA, depth and normal images, resumable.

Per object: an empty scene, the mesh imported (or the procedural object built), normalised into the unit box, lit,
then every view not yet on disk rendered with Cycles (RGBA) and ray cast (depth, normals), each file written
atomically; ``transforms.json`` is rewritten after every view and the object enters ``index.json`` once all its
views exist. An object that cannot be made (unreadable file, no faces, degenerate box, missing texture) is logged
with the reason and skipped; the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import layout, procedural, scene
from .png import write_png
from .rig import DEPTH_UNIT, MAX_DEPTH_STEPS, RenderSettings, sample_views
from .surface import SurfaceCaster


@dataclass
class Summary:
    """What a run did: objects rendered (views rendered in all), already complete, skipped with their reasons."""

    rendered: list[str] = field(default_factory=list)
    views_rendered: int = 0
    complete: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = ""


def render_dataset(
    output: Path,
    planned: Sequence[layout.Planned],
    settings: RenderSettings,
    device: str = "CPU",
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> Summary:
    """Render ``planned`` objects into the dataset folder ``output`` (created, or resumed / added to).

    Raises :class:`layout.OutputError` before rendering anything when the output cannot hold the dataset or an
    object already in it was rendered with other settings, and ``ValueError`` for impossible settings or names
    that appear twice.
    """
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(problems))
    names = [p.name for p in planned]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two objects would share the name(s) {', '.join(twice)}: rename the mesh files")
    index = layout.open_output(output)
    conflicts = [c for p in planned if (c := layout.settings_conflict(output / p.name, settings, p.source))]
    if conflicts:
        raise layout.OutputError(
            "objects in the output were rendered with other settings; delete their folders, use a new output "
            "folder or the same options: " + "; ".join(conflicts)
        )

    summary = Summary()
    started = time.perf_counter()
    for number, item in enumerate(planned, start=1):
        prefix = f"[{number}/{len(planned)}] {item.name}"
        folder = output / item.name
        todo = layout.missing_views(folder, settings.views)
        if not todo and _transforms_complete(folder, settings.views):
            layout.add_to_index(output, index, _entry(item, settings))
            summary.complete.append(item.name)
            log(f"{prefix}: complete, skipped")
            continue
        try:
            rendered, device_used = _render_object(item, folder, settings, todo, device, threads, prefix, log)
        except scene.MeshProblem as problem:
            summary.skipped[item.name] = str(problem)
            log(f"{prefix}: SKIPPED: {problem}")
            continue
        except RuntimeError as error:  # a Blender operator failed (the render itself): this object only
            summary.skipped[item.name] = f"rendering failed: {error}"
            log(f"{prefix}: SKIPPED: rendering failed: {error}")
            continue
        summary.device = summary.device or device_used
        summary.rendered.append(item.name)
        summary.views_rendered += rendered
        layout.add_to_index(output, index, _entry(item, settings))
    summary.seconds = time.perf_counter() - started
    return summary


def _entry(item: layout.Planned, settings: RenderSettings) -> dict:
    return {"name": item.name, "path": item.name, "views": settings.views, "source": item.source}


def _transforms_complete(folder: Path, views: int) -> bool:
    data = layout.read_transforms(folder)
    return data is not None and len(data.get("frames") or []) == views


def _render_object(item, folder, settings, todo, device, threads, prefix, log) -> tuple[int, str]:
    """Build the object's scene and render the views ``todo``; returns (views rendered, device used)."""
    started = time.perf_counter()
    current = scene.empty_scene()
    if item.path is not None:
        scene.import_mesh(item.path)
    else:
        procedural.build(current, settings.seed, item.index)
    surface = scene.normalise(current)
    camera = scene.light_and_camera(current)
    device_used = scene.configure_render(current, settings, device, threads)
    caster = SurfaceCaster(surface)
    views = sample_views(settings, item.name)
    for kind in layout.KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.tmp"), *folder.glob("*/*.tmp")]:  # left behind by an interrupted run
        stale.unlink(missing_ok=True)
    done = [k for k in range(settings.views) if k not in set(todo)]
    if todo and len(todo) < settings.views:
        log(f"{prefix}: resuming, {len(done)} of {settings.views} views already written")
    for k in todo:
        files = layout.view_files(folder, k, settings.views)
        scene.render_view(current, camera, views[k], files["rgba"])
        depth, normals = caster.depth_and_normals(views[k], settings.size)
        write_png(files["depth"], encode_depth(depth))
        write_png(files["normal"], encode_normals(normals))
        done = sorted(done + [k])
        layout.write_json(
            folder / layout.TRANSFORMS, layout.transforms(settings, views, done, surface.bounds, item.source)
        )
        log(f"{prefix}: view {k + 1}/{settings.views}")
    if not todo:  # every image was there but transforms.json was not: write it
        layout.write_json(
            folder / layout.TRANSFORMS, layout.transforms(settings, views, done, surface.bounds, item.source)
        )
    log(f"{prefix}: done, {len(todo)} view(s) in {time.perf_counter() - started:.1f} s")
    return len(todo), device_used


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Camera-z depth in world units (0 = background) → 16-bit steps of ``DEPTH_UNIT`` (a hit rounds to ≥ 1)."""
    steps = np.rint(depth / DEPTH_UNIT)
    steps = np.where(depth > 0, np.clip(steps, 1, MAX_DEPTH_STEPS), 0)
    return steps.astype(np.uint16)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (0 = background) → 16-bit RGB (n + 1) / 2, background 0."""
    foreground = np.any(normals != 0, axis=-1, keepdims=True)
    encoded = np.rint((normals + 1.0) / 2.0 * 65535.0).clip(0, 65535)
    return np.where(foreground, encoded, 0).astype(np.uint16)
