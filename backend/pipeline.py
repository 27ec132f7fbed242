"""The reconstruction pipeline: presets, the typed result, and the one function that runs every stage.

Two methods share the stages' contracts:
- ``fit`` (no weights): load (``backend.inputs``) → normalise → triplane → fit → extract → refine texture → bake;
- ``gtr`` (a GTR checkpoint, :mod:`backend.gtr.run`): canonical frame → generator → marching cubes → official
  texture refinement → bake.
``auto`` takes ``gtr`` when a checkpoint is configured (option ``checkpoint`` or ``$GTR_CHECKPOINT``), else ``fit``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .bake import BakeConfig, bake
from .errors import InputError
from .export import ExportConfig, export_mesh, write_json_atomic
from .extract import ExtractConfig, extract
from .field import FieldConfig, TriplaneField
from .fit import FitConfig, fit
from .gtr.checkpoint import read_checkpoint
from .gtr.config import RefineSettings
from .gtr.rig import CanonicalFrame
from .gtr.run import GTRSettings, reconstruct_gtr
from .mesh import Mesh
from .mesh_render import composite, render_mesh
from .metrics import psnr
from .normalise import Normalisation, NormaliseConfig, normalise
from .progress import Hooks, StageTimer
from .refine import RefineConfig, refine_texture
from .views import Job, View
from .volume import OccupancyGrid


@dataclass(frozen=True)
class PipelineConfig:
    max_image_size: int = 512
    """Images whose longer side is larger are downscaled (cameras adjusted) before fitting."""
    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    bake: BakeConfig = field(default_factory=BakeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    gtr: GTRSettings = field(default_factory=GTRSettings)
    """Settings of the ``gtr`` method (its own mesh grid and refinement; shares ``bake`` and ``export``)."""


METHODS = ("auto", "gtr", "fit")
CHECKPOINT_ENV = "GTR_CHECKPOINT"

PRESETS: dict[str, PipelineConfig] = {
    # Sized for a 2-core CPU: about two to three minutes for 16 views at 256².
    "draft": PipelineConfig(
        max_image_size=400,
        fit=FitConfig(
            steps=1200,
            max_seconds=120.0,
            rays_per_step=2048,
            hull_resolution=128,
            field=FieldConfig(resolution=192, channels=12, density_scale=25.0),
        ),
        extract=ExtractConfig(resolution=192),
        refine=RefineConfig(iterations=400, max_seconds=15.0, points_per_step=16384),
        gtr=GTRSettings(mesh_resolution=128, refine=RefineSettings(raster_size=512)),
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
        refine=RefineConfig(iterations=1500, points_per_step=131072),
        bake=BakeConfig(texture_size=2048),
    ),
}


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}.", fix=f"use one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def configure(
    base: PipelineConfig,
    *,
    texture: str | None = None,
    texture_size: int | None = None,
    faces: int | None = None,
    fit_steps: int | None = None,
    fit_seconds: float | None = None,
    polish_steps: int | None = None,
    up_axis: str | None = None,
    mesh_resolution: int | None = None,
    refine_iterations: int | None = None,
) -> PipelineConfig:
    """The preset with the user's choices applied (None keeps the preset's value)."""
    cfg = base
    if fit_steps is not None:
        if int(fit_steps) < 1:
            raise InputError(f"fit_steps must be at least 1, got {fit_steps}.")
        cfg = replace(cfg, fit=replace(cfg.fit, steps=int(fit_steps)))
    if fit_seconds is not None:
        if float(fit_seconds) <= 0:
            raise InputError(f"fit_seconds must be positive, got {fit_seconds}.")
        cfg = replace(cfg, fit=replace(cfg.fit, max_seconds=float(fit_seconds)))
    if texture is not None:
        if texture not in ("vertex", "uv"):
            raise InputError(f"unknown texture mode {texture!r}.", fix="use 'vertex' or 'uv'.")
        cfg = replace(cfg, bake=replace(cfg.bake, texture=texture))
    if texture_size is not None:
        cfg = replace(cfg, bake=replace(cfg.bake, texture_size=int(texture_size)))
    if faces is not None:
        cfg = replace(cfg, extract=replace(cfg.extract, target_faces=int(faces)),
                      gtr=replace(cfg.gtr, target_faces=int(faces)))
    if mesh_resolution is not None:
        if not 16 <= int(mesh_resolution) <= 1024:
            raise InputError(f"mesh_resolution must be between 16 and 1024, got {mesh_resolution}.")
        cfg = replace(cfg, extract=replace(cfg.extract, resolution=int(mesh_resolution)),
                      gtr=replace(cfg.gtr, mesh_resolution=int(mesh_resolution)))
    if refine_iterations is not None:
        if int(refine_iterations) < 0:
            raise InputError(f"refine_iterations must be 0 or more, got {refine_iterations}.")
        n = int(refine_iterations)
        cfg = replace(cfg, refine=replace(cfg.refine, iterations=n),
                      gtr=replace(cfg.gtr, refine=replace(cfg.gtr.refine, iterations=n)))
    if polish_steps is not None:
        if int(polish_steps) < 0:
            raise InputError(f"polish_steps must be 0 or more, got {polish_steps}.")
        cfg = replace(cfg, gtr=replace(cfg.gtr, polish_steps=int(polish_steps)))
    if up_axis is not None:
        if up_axis not in ("y", "z"):
            raise InputError(f"unknown up axis {up_axis!r}.", fix="use 'z' (Blender) or 'y'.")
        cfg = replace(cfg, gtr=replace(cfg.gtr, rig=replace(cfg.gtr.rig, up_axis=up_axis)))
    return cfg


def config_from_options(options: dict) -> PipelineConfig:
    """Pipeline configuration from job options / CLI flags: preset, texture, texture_size, faces, fit_steps,
    fit_seconds, polish_steps, up_axis, mesh_resolution, refine_iterations."""
    return configure(
        preset(options.get("preset", "draft")),
        texture=options.get("texture"),
        texture_size=options.get("texture_size"),
        faces=options.get("faces"),
        fit_steps=options.get("fit_steps"),
        fit_seconds=options.get("fit_seconds"),
        polish_steps=options.get("polish_steps"),
        up_axis=options.get("up_axis"),
        mesh_resolution=options.get("mesh_resolution"),
        refine_iterations=options.get("refine_iterations"),
    )


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
    """``auto`` → CUDA when present, else CPU; ``cuda`` without CUDA is an error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for but this torch build sees no CUDA GPU.",
            fix="use --device cpu, or install a CUDA build of torch (python install.py --cuda).",
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}.", fix="use auto, cpu or cuda.")
    return torch.device(name)


def downscale(view: View, max_size: int) -> View:
    """The view with its image (and mask, depth) resized so the longer side is at most ``max_size``."""
    H, W = view.rgb.shape[:2]
    if max(H, W) <= max_size:
        return view
    s = max_size / max(H, W)
    h, w = max(1, round(H * s)), max(1, round(W * s))

    def resize(a, mode):
        t = torch.as_tensor(a, dtype=torch.float32)
        t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
        out = torch.nn.functional.interpolate(t, size=(h, w), mode=mode)[0]
        return (out[0] if out.shape[0] == 1 and np.ndim(a) == 2 else out.permute(1, 2, 0)).numpy()

    return replace(
        view,
        camera=view.camera.scaled(w, h),
        rgb=resize(view.rgb, "area"),
        mask=None if view.mask is None else resize(view.mask, "area"),
        depth=None if view.depth is None else resize(view.depth, "nearest"),
    )


@dataclass
class Reconstruction:
    """What a run produced. ``mesh`` is in the job's world frame; the rest is kept for evaluation and previews."""

    mesh: Mesh
    canonical_mesh: Mesh
    field: TriplaneField
    occupancy: OccupancyGrid | None
    """Occupied space for volume rendering (``fit`` only)."""
    normalisation: Normalisation | CanonicalFrame
    views: list[View]
    """The input views as the method saw them: resized and in the canonical frame."""
    timings: dict[str, float]
    metrics: dict
    warnings: list[str] = field(default_factory=list)
    """Things the user should know (e.g. cameras unlike the GTR training rig)."""


def training_psnr(mesh: Mesh, views: list[View]) -> float:
    """Mean PSNR of the mesh rendered into the views (3×3 supersampled) against them, composited on white."""
    renders = [render_mesh(mesh, v.camera, supersample=3) for v in views]
    return float(np.mean([psnr(img, composite(v.rgb, v.mask)) for img, v in zip(renders, views)]))


def reconstruct(job: Job, config: PipelineConfig, device: torch.device, hooks: Hooks | None = None) -> Reconstruction:
    """Run every stage on a loaded job. Raises InputError for bad input and Cancelled when cancelled."""
    method, checkpoint = choose_method(job.options)
    if method == "gtr":
        return _reconstruct_gtr(job, checkpoint, config, device, hooks)
    return _reconstruct_fit(job, config, device, hooks)


def _reconstruct_gtr(job: Job, checkpoint: str, config: PipelineConfig, device, hooks) -> Reconstruction:
    hooks = hooks or Hooks()
    hooks.report("checkpoint", 0, 1, "reading the GTR weights")
    weights = read_checkpoint(checkpoint, trust=bool(job.options.get("trust_checkpoint", False)))
    out = reconstruct_gtr(job, weights, config.gtr, config.bake, device, hooks)
    out.metrics["train_psnr"] = round(training_psnr(out.canonical_mesh, out.views), 3)
    return Reconstruction(out.mesh, out.canonical_mesh, out.field, None, out.frame, out.views, out.timings,
                          out.metrics, out.warnings)


def _reconstruct_fit(job: Job, config: PipelineConfig, device, hooks) -> Reconstruction:
    hooks = hooks or Hooks()
    timer = StageTimer()
    lap = timer.lap
    views = [downscale(v, config.max_image_size) for v in job.views]
    canonical, norm, _ = normalise(views, job.bounds, config.normalise, device, hooks)
    lap("normalise")
    fitted = fit(canonical, config.fit, device, hooks)
    lap("fit")
    mesh = extract(fitted.field, fitted.occupancy, config.extract, hooks, canonical, fitted.hull)
    if mesh.num_faces == 0:
        raise InputError(
            "the reconstruction is empty: no surface was found inside the bounds.",
            fix="check masks and cameras, or try a larger preset.",
        )
    lap("extract")
    refined = refine_texture(fitted.field, mesh, canonical, config.refine, hooks)
    lap("refine")
    baked = bake(mesh, fitted.field.color, config.bake, hooks)
    lap("bake")
    train_psnr = training_psnr(baked, canonical)
    lap("metrics")
    timings = timer.finish()
    world = baked.transformed(norm.world_from_canonical)
    metrics = {
        "method": "fit",
        "seconds": timings["total"],
        "faces": world.num_faces,
        "vertices": world.num_vertices,
        "train_psnr": round(train_psnr, 3),
        "fit_steps": fitted.steps,
        "fit_psnr": round(float(np.mean(fitted.psnr_history[-100:])), 3) if fitted.psnr_history else None,
        "refine_iterations": refined.iterations,
    }
    return Reconstruction(world, baked, fitted.field, fitted.occupancy, norm, canonical, timings, metrics)


def write_outputs(result: Reconstruction, out_dir: Path, config: PipelineConfig, extra: dict | None = None) -> dict:
    """Mesh files + ``metrics.json`` into ``out_dir``; returns the metrics written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = export_mesh(result.mesh, out_dir, config.export)
    metrics = dict(
        result.metrics,
        warnings=result.warnings,
        timings=result.timings,
        files={k: str(p.name) for k, p in files.items()},
    )
    if extra:
        metrics.update(extra)
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
