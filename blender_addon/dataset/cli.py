"""The ``render-dataset`` command line; :func:`main` parses, checks, renders and prints a summary.

Parsing needs no bpy (``--help`` works anywhere); rendering imports it, so it runs with the ``bpy`` module or inside
``blender -b`` (see ``launch.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .layout import OutputError, Planned, mesh_objects, procedural_objects
from .rig import RenderSettings

DESCRIPTION = """\
Render a training dataset (docs/DATASET.md): for every mesh file under --meshes (OBJ with MTL/textures, PLY, STL,
GLB/glTF) and/or --procedural N generated objects, an object folder with N random views — RGBA PNG (Cycles),
16-bit camera-z depth and 16-bit world-space normal PNGs — and transforms.json, listed in DATASET/index.json.
Each object is normalised into the unit box (centred, largest side 1). Views look at the origin from random
azimuths, elevations, distances and fields of view drawn from --seed and the object's name.

Re-running the same command resumes: complete objects are skipped, a partly rendered object continues at its
missing views. Objects that cannot be read are logged and skipped.

Run with Blender's Python:
  python -m blender_addon.dataset --meshes DIR --output DATASET          (the bpy module, from the repository root)
  blender -b --factory-startup --python blender_addon/dataset/launch.py -- --meshes DIR --output DATASET
"""


def parser() -> argparse.ArgumentParser:
    defaults = RenderSettings()
    p = argparse.ArgumentParser(
        prog="render-dataset", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = p.add_argument_group("objects (at least one of)")
    source.add_argument("--meshes", type=Path, metavar="DIR", help="folder searched recursively for mesh files")
    source.add_argument(
        "--procedural",
        type=int,
        default=0,
        metavar="N",
        help="also make N procedural objects procedural_0000 … (primitives, booleans, procedural materials; the "
        "same objects for the same --seed)",
    )
    p.add_argument("--output", type=Path, required=True, metavar="DATASET", help="dataset folder (created)")
    p.add_argument("--views", type=int, default=defaults.views, help="views per object (default %(default)s)")
    p.add_argument("--size", type=int, default=defaults.size, help="image width = height in pixels (%(default)s)")
    p.add_argument(
        "--samples", type=int, default=defaults.samples, help="Cycles samples per pixel, no denoiser (%(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the views and the procedural objects (%(default)s)"
    )
    p.add_argument(
        "--fov",
        type=float,
        nargs="+",
        default=list(defaults.fov[:1]),
        metavar="DEG",
        help="field of view in degrees, or a MIN MAX range to draw from (default %(default)s)",
    )
    p.add_argument(
        "--distance",
        type=float,
        nargs="+",
        default=list(defaults.distance[:1]),
        metavar="D",
        help="camera distance from the centre (object's largest side = 1), or a MIN MAX range (default %(default)s)",
    )
    p.add_argument(
        "--elevation",
        type=float,
        nargs="+",
        default=list(defaults.elevation),
        metavar="DEG",
        help="elevation above the horizontal, MIN MAX range or one value, degrees (default %(default)s)",
    )
    p.add_argument(
        "--device",
        choices=("CPU", "GPU"),
        default="CPU",
        help="Cycles device; GPU uses the first of OptiX, CUDA, HIP, Metal, oneAPI with a device, else the CPU "
        "(default %(default)s)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU render threads, 0 = all cores (default %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show Blender's own import and render logs")
    return p


def _range(values: Sequence[float], name: str, p: argparse.ArgumentParser) -> tuple[float, float]:
    if len(values) not in (1, 2):
        p.error(f"--{name} takes one value or MIN MAX, got {len(values)} values")
    return (float(values[0]), float(values[-1]))


def settings_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> RenderSettings:
    settings = RenderSettings(
        views=args.views,
        size=args.size,
        samples=args.samples,
        seed=args.seed,
        fov=_range(args.fov, "fov", p),
        distance=_range(args.distance, "distance", p),
        elevation=_range(args.elevation, "elevation", p),
    )
    problems = settings.problems()
    if problems:
        p.error("; ".join(problems))
    return settings


def planned_objects(args: argparse.Namespace, settings: RenderSettings, p: argparse.ArgumentParser) -> list[Planned]:
    planned: list[Planned] = []
    if args.meshes is not None:
        if not args.meshes.is_dir():
            p.error(f"--meshes {args.meshes}: no such folder")
        found = mesh_objects(args.meshes)
        if not found:
            p.error(f"--meshes {args.meshes}: no mesh files (.obj .ply .stl .glb .gltf) found in it")
        planned.extend(found)
    if args.procedural < 0:
        p.error(f"--procedural must be 0 or more, got {args.procedural}")
    planned.extend(procedural_objects(args.procedural, settings.seed))
    if not planned:
        p.error("nothing to render: give --meshes DIR and/or --procedural N")
    return planned


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    settings = settings_from(args, p)
    planned = planned_objects(args, settings, p)
    if args.threads < 0:
        p.error(f"--threads must be 0 (all cores) or more, got {args.threads}")
    try:
        import bpy  # noqa: F401
    except ImportError:
        print(
            "render-dataset: error: needs Blender's Python: run it with the bpy module (pip install bpy, Python 3.11) "
            "or inside Blender: blender -b --python blender_addon/dataset/launch.py -- ARGS",
            file=sys.stderr,
        )
        return 1
    from . import render, scene

    scene.set_quiet(not args.verbose)
    log = lambda line: print(line, flush=True)
    log(f"render-dataset: {len(planned)} object(s) × {settings.views} views at {settings.size}² into {args.output}")
    try:
        summary = render.render_dataset(
            args.output.absolute(), planned, settings, device=args.device, threads=args.threads, log=log
        )
    except (OutputError, ValueError) as error:
        print(f"render-dataset: error: {error}", file=sys.stderr)
        return 1
    log(
        f"render-dataset: {len(summary.rendered)} object(s) rendered ({summary.views_rendered} views, "
        f"{summary.seconds:.1f} s{', ' + summary.device if summary.device else ''}), "
        f"{len(summary.complete)} already complete, {len(summary.skipped)} skipped"
    )
    for name, reason in summary.skipped.items():
        log(f"  skipped {name}: {reason}")
    nothing_made = not summary.rendered and not summary.complete
    return 1 if summary.skipped and nothing_made else 0
