"""The reconstruction pipeline: presets, the typed result, and the one function that runs every stage.

Two methods share the stages' contracts:
- ``fit`` (no weights): load (``backend.inputs``) → normalise → triplane → fit → extract → refine geometry (mesh
  renders against the views) → refine texture → bake;
- ``gtr`` (a GTR checkpoint, :mod:`backend.gtr.run`): canonical frame → generator → marching cubes → official
  texture refinement → bake.
``auto`` takes ``gtr`` when a checkpoint is configured (option ``checkpoint`` or ``$GTR_CHECKPOINT``), else ``fit``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .bake import BakeConfig, bake
from .errors import InputError
from .export import ExportConfig, export_mesh, save_png, write_json_atomic
from .extract import ExtractConfig, extract
from .field import FieldConfig, TriplaneField
from .fit import FitConfig, clip_to_box, fit, hull_grid
from .frame import CanonicalFrame
from .gtr.checkpoint import Weights, read_checkpoint
from .gtr.run import GTRSettings, reconstruct_gtr
from .heap import release_free_memory
from .mesh import Mesh
from .mesh_render import composite, render_mesh
from .metrics import psnr
from .normalise import NormaliseConfig, bounds_from_cameras, normalise
from .options import CONFIG_KEYS, OPTIONS
from .options import apply as apply_options
from .preview import coloured, hull_mesh, send_preview
from .progress import Hooks, StageTimer, cut_short_warning
from .refine import GTRRefineConfig, RefineConfig, refine_texture, texture_copy
from .reshape import GeometryConfig, refine_geometry
from .segment import DerivedMasks, SegmentConfig, derive_masks
from .threads import ThreadPacer, use_threads
from .views import Job, View, downscale, evenly_spread
from .volume import OccupancyGrid, RenderConfig


@dataclass(frozen=True)
class PipelineConfig:
    max_image_size: int = 512
    """Images whose longer side is larger are downscaled (cameras adjusted) before fitting."""
    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    """World ↔ canonical frame: margin, hull resolution for bounds from masks."""
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    """Masks derived from the photos when the views have none (both methods)."""
    fit: FitConfig = field(default_factory=FitConfig)
    """The ``fit`` method's field optimisation."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Surface extraction: lattice, iso-level, clean-up, decimation (``fit`` method)."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """Geometry refinement of the extracted mesh against the views' masks and colours (``fit`` method)."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    """Texture refinement at mesh surface points (``fit`` method)."""
    bake: BakeConfig = field(default_factory=BakeConfig)
    """Vertex colours or a UV texture (both methods)."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Which mesh files to write (both methods)."""
    gtr: GTRSettings = field(default_factory=GTRSettings)
    """Settings of the ``gtr`` method (its own mesh grid and refinement; shares ``bake`` and ``export``)."""


MASKS_FOLDER = "masks"
"""Subfolder of the output folder that holds the masks derived for a job without masks."""
METHODS = OPTIONS["method"].choices
CHECKPOINT_ENV = "GTR_CHECKPOINT"

PRESETS: dict[str, PipelineConfig] = {
    # Sized for a 2-core CPU: the demo (16 views at 160²) and 16 views at 256² each in under three minutes.
    "draft": PipelineConfig(
        max_image_size=400,
        fit=FitConfig(
            steps=800,
            rays_per_step=2048,
            hull_resolution=128,
            field=FieldConfig(resolution=192, channels=12, density_scale=25.0),
            render=RenderConfig(samples_per_diagonal=256),
        ),
        extract=ExtractConfig(resolution=192, depth_map_size=256),
        geometry=GeometryConfig(iterations=50, max_size=256),
        refine=RefineConfig(iterations=200, points_per_step=16384),
        gtr=GTRSettings(mesh_resolution=128, refine=GTRRefineConfig(raster_size=512)),
    ),
    "standard": PipelineConfig(
        max_image_size=800,
        fit=FitConfig(
            steps=4000,
            rays_per_step=8192,
            hull_resolution=128,
            field=FieldConfig(resolution=256, channels=16, density_scale=25.0),
        ),
        extract=ExtractConfig(resolution=256),
        geometry=GeometryConfig(iterations=200, views_per_iteration=8, max_size=512),
        refine=RefineConfig(iterations=600, points_per_step=65536),
    ),
    "high": PipelineConfig(
        max_image_size=1600,
        fit=FitConfig(
            steps=12000,
            rays_per_step=16384,
            hull_resolution=192,
            field=FieldConfig(resolution=512, channels=24, density_scale=25.0),
        ),
        extract=ExtractConfig(resolution=384),
        geometry=GeometryConfig(iterations=300, views_per_iteration=8, max_size=800),
        refine=RefineConfig(iterations=1500, points_per_step=131072),
        bake=BakeConfig(texture_size=2048),
    ),
}


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}.", fix=f"use one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def configure(base: PipelineConfig, **options) -> PipelineConfig:
    """The preset with the user's choices applied (None keeps the preset's value).

    The keywords are the config options of :data:`backend.options.OPTIONS` (``texture``, ``texture_size``,
    ``faces``, ``fit_steps``, ``fit_seconds``, ``mesh_resolution``, ``refine_iterations``, ``polish_steps``,
    ``up_axis``); each value is range-checked there and written to the config path(s) the registry names.
    """
    return apply_options(base, options)


def config_from_options(options: dict) -> PipelineConfig:
    """Pipeline configuration from job options / CLI flags: the ``preset`` with the config options applied.

    Keys that are not config options (``method``, ``checkpoint``, loader options, ...) are read elsewhere and
    ignored here.
    """
    return configure(preset(options.get("preset", "draft")), **{k: options[k] for k in CONFIG_KEYS if k in options})


def choose_method(options: dict) -> tuple[str, str | None]:
    """(``"gtr"`` or ``"fit"``, checkpoint path or None) from the options ``method`` and ``checkpoint``."""
    method = options.get("method") or "auto"
    checkpoint = options.get("checkpoint") or os.environ.get(CHECKPOINT_ENV) or None
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}.", fix=f"use one of {', '.join(METHODS)}.")
    if method == "gtr" and not checkpoint:
        raise InputError(
            "the gtr method needs a checkpoint.",
            fix=f"pass --checkpoint PATH (or set {CHECKPOINT_ENV}); the official GTR weights are downloaded by you "
            "under their non-commercial licence. Without weights use --method fit.",
        )
    if method == "fit":
        return "fit", None
    return ("gtr", str(checkpoint)) if checkpoint else ("fit", None)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` / ``cuda:N`` without CUDA, or with N out of range, is an
    :class:`InputError` that says so (as is any other name)."""
    name = OPTIONS["device"].check(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {name} was asked for but this torch build sees no CUDA GPU.",
            fix="use --device cpu, or install a CUDA build of torch (python install.py --cuda).",
        )
    if name.startswith("cuda:"):
        count = torch.cuda.device_count()
        if int(name[5:]) >= count:
            raise InputError(
                f"--device {name}: torch sees {count} CUDA GPU(s), numbered 0 to {count - 1}.",
                fix=f"use --device cuda:0 ... cuda:{count - 1}, or check CUDA_VISIBLE_DEVICES.",
            )
    return torch.device(name)


@dataclass
class Reconstruction:
    """What a run produced. ``mesh`` is in the job's world frame; the rest is kept for evaluation and previews."""

    mesh: Mesh
    canonical_mesh: Mesh
    field: TriplaneField
    """The field as the fit (or the generator) left it: the mesh was extracted from it; refinement does not change
    it, so its volume renders are "before meshing"."""
    texture_field: TriplaneField
    """The texture-refined copy of ``field`` (own triplane and colour MLP) the mesh colours were baked from."""
    occupancy: OccupancyGrid | None
    """Occupied space for volume rendering (``fit`` only)."""
    frame: CanonicalFrame
    """World → canonical frame the method worked in."""
    views: list[View]
    """The input views as the method saw them: resized and in the canonical frame."""
    timings: dict[str, float]
    metrics: dict
    warnings: list[str] = field(default_factory=list)
    """Things the user should know (e.g. cameras unlike the GTR training rig)."""
    derived_masks: dict[str, np.ndarray] | None = None
    """For a job without masks: the masks derived for it (view name → (H, W) float32 at the photo's size), written
    as ``masks/NAME.png`` so the user can inspect them and run the job again with them."""


TRAINING_PSNR_VIEWS = 16
"""Training PSNR is measured on at most this many of the input views, evenly spread through the list (on lego's
100 views at 400² all of them took 61 s)."""


def training_psnr(mesh: Mesh, views: list[View], hooks: Hooks | None = None) -> float:
    """Mean PSNR of the mesh rendered into the views (3×3 supersampled) against them, composited on white; over
    at most :data:`TRAINING_PSNR_VIEWS` of them, evenly spread. Reports each view as stage ``metrics``."""
    hooks = hooks or Hooks()
    views = evenly_spread(views, TRAINING_PSNR_VIEWS)
    scores = []
    for n, view in enumerate(views):
        hooks.report("metrics", n, len(views), "training PSNR")
        scores.append(psnr(render_mesh(mesh, view.camera, supersample=3), composite(view.rgb, view.mask)))
    hooks.report("metrics", len(views), len(views), "training PSNR")
    return float(np.mean(scores))


WeightsLoader = Callable[[str, bool, Hooks], Weights]
"""(checkpoint path, trust, hooks) → checked weights; reports under stage ``checkpoint``. :func:`read_weights`
reads the file every time; a long-lived caller (``python -m backend serve``) passes a cache."""


def read_weights(path: str, trust: bool, hooks: Hooks) -> Weights:
    """The default :data:`WeightsLoader`: read and check the checkpoint file."""
    hooks.report("checkpoint", 0, 1, "reading the GTR weights")
    return read_checkpoint(path, trust=trust)


def reconstruct(
    job: Job,
    config: PipelineConfig,
    device: torch.device,
    hooks: Hooks | None = None,
    load_weights: WeightsLoader = read_weights,
) -> Reconstruction:
    """Run every stage on a loaded job. Raises InputError for bad input and Cancelled when cancelled.

    ``load_weights`` gives the ``gtr`` method its checkpoint. Previews (``hooks.preview``) come after the visual
    hull, after extraction and (``fit``) after geometry refinement, before texture refinement. torch's CPU
    threads are set for the run: option ``threads``, else the CPUs this process may use less the cores other
    processes keep busy, looked at again every second (:class:`backend.threads.ThreadPacer`)."""
    method, checkpoint = choose_method(job.options)
    threads = use_threads(job.options.get("threads"))
    if job.options.get("threads") is None:  # follow the machine's load (backend.threads)
        hooks = replace(hooks or Hooks(), pace=ThreadPacer())
    segmented = None
    if any(v.mask is None for v in job.views):
        start = time.perf_counter()
        job, segmented = with_derived_masks(job, config, device, hooks or Hooks())
        segment_seconds = round(time.perf_counter() - start, 3)
    if method == "gtr":
        result = _reconstruct_gtr(job, checkpoint, config, device, hooks, load_weights)
    else:
        result = _reconstruct_fit(job, config, device, hooks)
    result.warnings[:0] = [w for w in job.warnings if w not in result.warnings]  # the loader's come first
    result.metrics["threads"] = threads
    if segmented is not None:
        result.derived_masks = {v.name: v.mask for v in segmented.views}
        result.metrics["object_fill"] = round(segmented.fill, 4)
        result.timings = {"segment": segment_seconds, **result.timings}
        result.timings["total"] = round(result.timings["total"] + segment_seconds, 3)
        if "seconds" in result.metrics:
            result.metrics["seconds"] = result.timings["total"]
    return result


def with_derived_masks(job: Job, config: PipelineConfig, device, hooks: Hooks) -> tuple[Job, DerivedMasks]:
    """The job with a mask on every view, derived from the photos inside the bounds (:mod:`backend.segment`);
    bounds are estimated from the cameras when the job has none. The job's warnings say what was done."""
    warnings = list(job.warnings)
    bounds = job.bounds
    if bounds is None:
        bounds = bounds_from_cameras(job.views, config.normalise)
        warnings.append(
            "the views have no masks and the job no bounds: the object was assumed to lie in a box of size "
            f"{bounds.size[0]:.3g} around {np.round(bounds.centre, 3).tolist()}, where the cameras look. Give "
            "bounds (--bounds, job.json 'bounds' or a bounds object in Blender) if the mesh misses part of the "
            "object or holds background."
        )
    hooks.report("segment", 0, 1, "masks from the photos")
    segmented = derive_masks(job.views, bounds, config.segment, hooks, device)
    warnings += segmented.warnings
    warnings.append(f"the views had no masks: masks were derived from the photos (written to {MASKS_FOLDER}/).")
    return replace(job, views=segmented.views, bounds=segmented.bounds, warnings=warnings), segmented


def _reconstruct_gtr(
    job: Job, checkpoint: str, config: PipelineConfig, device, hooks, load_weights: WeightsLoader
) -> Reconstruction:
    hooks = hooks or Hooks()
    weights = load_weights(checkpoint, bool(job.options.get("trust_checkpoint", False)), hooks)
    out = reconstruct_gtr(job, weights, config.gtr, config.bake, device, hooks)
    out.metrics["train_psnr"] = round(training_psnr(out.canonical_mesh, out.views, hooks), 3)
    return Reconstruction(mesh=out.mesh, canonical_mesh=out.canonical_mesh, field=out.field,
                          texture_field=out.texture_field, occupancy=None, frame=out.frame, views=out.views,
                          timings=out.timings, metrics=out.metrics, warnings=out.warnings)


def _reconstruct_fit(job: Job, config: PipelineConfig, device, hooks) -> Reconstruction:
    hooks = hooks or Hooks()
    timer = StageTimer()

    def lap(stage: str) -> None:
        timer.lap(stage)
        release_free_memory()  # what the stage freed goes back to the system (see backend.heap)

    views = [downscale(v, config.max_image_size) for v in job.views]
    canonical, frame, _ = normalise(views, job.bounds, config.normalise, device, hooks)
    lap("normalise")
    hull = hull_grid(canonical, config.fit.hull_resolution, device, hooks)
    if job.bounds is not None:  # the object lies inside the bounds (below it, a hull seen only from above goes on)
        corners = frame.to_canonical_points(job.bounds.corners())
        hull = clip_to_box(hull, corners.min(0), corners.max(0))
    if all(v.mask is not None for v in canonical):  # without masks the "hull" is the whole box
        send_preview(hooks, lambda: hull_mesh(hull), frame, "visual hull")
    fitted = fit(canonical, config.fit, device, hooks, hull=hull)
    lap("fit")
    warnings = []
    if fitted.steps < config.fit.steps:
        warnings.append(cut_short_warning("field fit", fitted.steps, config.fit.steps, "fit_seconds",
                                          config.fit.max_seconds))
    mesh = extract(fitted.field, fitted.occupancy, config.extract, hooks, canonical, fitted.hull)
    if mesh.num_faces == 0:
        raise InputError(
            "the reconstruction is empty: no surface was found inside the bounds.",
            fix="check masks and cameras, or try a larger preset.",
        )
    lap("extract")
    surface = coloured(mesh, fitted.field.color)  # the field's colours: the geometry refinement's colour targets
    send_preview(hooks, lambda: surface, frame, "surface")
    mesh, reshaped = refine_geometry(surface, canonical, config.geometry, hooks)
    if reshaped.iterations:
        send_preview(hooks, lambda: mesh, frame, "refined surface")
    lap("geometry")
    texture_field = texture_copy(fitted.field)  # fitted.field stays as the fit left it
    refined = refine_texture(texture_field, mesh, canonical, config.refine, hooks)
    lap("refine")
    baked = bake(mesh, texture_field.color, config.bake, hooks)
    lap("bake")
    train_psnr = training_psnr(baked, canonical, hooks)
    lap("metrics")
    timings = timer.finish()
    world = baked.transformed(frame.world_from_canonical)
    metrics = {
        "method": "fit",
        "seconds": timings["total"],
        "faces": world.num_faces,
        "vertices": world.num_vertices,
        "train_psnr": round(train_psnr, 3),
        "fit_steps": fitted.steps,
        "fit_psnr": round(float(np.mean(fitted.psnr_history[-100:])), 3) if fitted.psnr_history else None,
        "geometry_iterations": reshaped.iterations,
        "geometry_loss": None if math.isnan(reshaped.final_loss) else round(reshaped.final_loss, 6),
        "refine_iterations": refined.iterations,
    }
    return Reconstruction(mesh=world, canonical_mesh=baked, field=fitted.field, texture_field=texture_field,
                          occupancy=fitted.occupancy, frame=frame, views=canonical, timings=timings, metrics=metrics,
                          warnings=warnings)


def write_outputs(
    result: Reconstruction,
    out_dir: Path,
    config: PipelineConfig,
    extra: dict | None = None,
    hooks: Hooks | None = None,
) -> dict:
    """Mesh files + ``metrics.json`` into ``out_dir`` (created here, when there is something to write); returns the
    metrics written.

    ``hooks`` gets one last cancel point (stage ``write``) before anything is written; after it the files are
    written as a group. Should writing fail or be interrupted (Ctrl+C) part-way, the files this call wrote are
    removed again, and the folder too if this call created it and it is left empty.
    """
    if hooks is not None:
        hooks.report("write", 0, 1, f"writing {out_dir}")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    written: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = export_mesh(result.mesh, out_dir, config.export)
        written += files.values()
        if result.derived_masks:
            folder = out_dir / MASKS_FOLDER
            if not folder.exists():
                folder.mkdir()
                written.append(folder)
            for name, mask in result.derived_masks.items():
                written.append(folder / f"{name}.png")
                save_png(written[-1], mask)
            files["masks"] = folder
        metrics = dict(
            result.metrics,
            warnings=result.warnings,
            timings=result.timings,
            files={k: str(p.name) for k, p in files.items()},
        )
        if extra:
            metrics.update(extra)
        write_json_atomic(out_dir / "metrics.json", metrics)
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return metrics
