"""The ``gtr`` pipeline method: feed-forward triplanes → marching cubes → texture refinement → bake.

Stages, as the official inference does them, around the user's cameras:
1. move the views into the model's canonical frame (Y-up, object in [-1, 1]³) and make them square at the model's
   input size; warn about cameras unlike the training rig; preview the visual hull (when someone listens);
2. generator → triplanes; optionally a short fit (``polish_steps``) adapts the triplane (not the decoder MLPs) to
   the views;
3. density on a grid, iso-level ``mesh_level``, marching cubes (official rule and vertex order); preview it;
4. the official texture refinement (triplane + colour MLP, L1 against the inputs);
5. vertex colours or a UV texture from the refined colour field; the mesh goes back to the user's world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..bake import BakeConfig, bake
from ..errors import InputError
from ..extract import decimate
from ..field import density_grid
from ..fit import FitConfig, fit, hull_grid
from ..mesh import Mesh
from ..preview import HULL_PREVIEW_CELLS, coloured, hull_mesh, send_preview
from ..progress import Hooks, StageTimer
from ..refine import GTRRefineConfig, refine_texture_gtr, surface_images, texture_copy
from ..views import Job, View
from .checkpoint import Weights, build_model
from .geometry import extract_mesh
from .precision import Precision, float32_precision
from .rays import image_input
from .rig import CanonicalFrame, RigConfig, canonical_frame, require_masks, rig_warnings, square_view


@dataclass(frozen=True)
class GTRSettings:
    """How the ``gtr`` method runs (presets size it for CPU or GPU)."""

    mesh_resolution: int | None = None
    """Marching-cubes grid side (None: the model's, 256 for the released one)."""
    refine: GTRRefineConfig = field(default_factory=GTRRefineConfig)
    """The official texture refinement (iterations, raster size, optimiser, schedule)."""
    polish_steps: int = 0
    """Volume-rendering fit steps on the generated triplane before meshing (0: none, as the official release).
    Polish trains the triplane only: the density and colour MLPs are the network's decoder, shared by every
    texel and calibrated to the generator's features and to ``mesh_level``; the colour MLP is adapted to the
    object afterwards by the texture refinement, as in the official recipe."""
    rig: RigConfig = field(default_factory=RigConfig)
    """The user's up axis, the canonical frame's scale and the training-rig warnings."""
    target_faces: int | None = None
    """Decimate to at most this many faces (None: keep the marching-cubes mesh, as the official release)."""
    precision: Precision = "highest"
    """Float32 matmul/convolution precision on CUDA (see ``gtr.precision``): "highest" (TF32 off, the precision
    the parity tests check) or "tf32" (faster on Ampere+, about 1e-3 relative error). No effect on CPU."""


@dataclass
class GTRResult:
    mesh: Mesh
    """Baked mesh in the user's world frame."""
    canonical_mesh: Mesh
    frame: CanonicalFrame
    field: torch.nn.Module
    """The generated (and polished) field the mesh was extracted from; texture refinement does not change it."""
    texture_field: torch.nn.Module
    """The refined copy of ``field`` (own triplane and colour MLP) the colours were baked from."""
    views: list[View]
    """The square views in the canonical frame that the model saw."""
    warnings: list[str]
    timings: dict[str, float]
    metrics: dict


def model_inputs(views: list[View]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Square canonical views (RGB already on white) → RGB (V, H, W, 3) truncated to 8 bits like the official
    loader, alpha (V, H, W), generator input (1, V, 10, H, W)."""
    return image_input(np.stack([v.rgb for v in views]), np.stack([v.mask for v in views]), [v.camera for v in views])


def reconstruct_gtr(
    job: Job,
    weights: Weights,
    settings: GTRSettings,
    bake_config: BakeConfig,
    device: torch.device,
    hooks: Hooks | None = None,
) -> GTRResult:
    """Run the ``gtr`` method's stages, under the float32 precision policy ``settings.precision``."""
    with float32_precision(settings.precision):
        hooks = hooks or Hooks()
        model = weights.config
        timer = StageTimer()
        lap = timer.lap
        require_masks(job.views)
        hooks.report("normalise", 0, 1, "canonical frame")
        frame = canonical_frame(job.views, job.bounds, settings.rig, device, hooks)
        views = [square_view(frame.view_to_canonical(v), model.input_size) for v in job.views]
        warnings = rig_warnings([v.camera for v in views], settings.rig)
        send_preview(hooks, lambda: hull_mesh(hull_grid(views, HULL_PREVIEW_CELLS, device)), frame, "visual hull")
        lap("normalise")

        hooks.report("generate", 0, 1, f"generator on {len(views)} views")
        generator, gtr_field = build_model(weights, device)
        targets, _, x = model_inputs(views)
        with torch.no_grad():
            triplanes = generator(x.to(device), hooks=hooks)[0]
        del generator
        if device.type == "cuda":
            torch.cuda.empty_cache()
        tri_field = gtr_field.on(triplanes.clone())
        lap("generate")

        if settings.polish_steps > 0:
            polish = FitConfig(steps=settings.polish_steps, train_mlps=False)
            fit(views, polish, device, hooks, field=tri_field)
            tri_field.planes.requires_grad_(False)
            lap("polish")

        resolution = settings.mesh_resolution or model.mesh_resolution
        hooks.report("extract", 0, 1, f"marching cubes {resolution}³")
        grid = density_grid(tri_field, resolution, hooks=hooks)
        verts, faces = extract_mesh(grid, model.mesh_level)
        del grid
        if faces.shape[0] == 0:
            raise InputError(
                f"the model found no surface (density never reaches {model.mesh_level:g}).",
                fix="check that the masks and cameras describe the object, or use --method fit.",
            )
        mesh = Mesh(verts, faces)
        if settings.target_faces:
            mesh = decimate(mesh, settings.target_faces)
        lap("extract")
        send_preview(hooks, lambda: coloured(mesh, tri_field.color), frame, "surface")

        refine_settings = settings.refine
        texture_field = texture_copy(tri_field)  # tri_field stays as the generator (and polish) left it
        if refine_settings.iterations > 0:
            tex_pts, covered = surface_images(mesh, [v.camera for v in views], refine_settings.raster_size, hooks)
            trace = refine_texture_gtr(texture_field, tex_pts, covered, targets.to(device), refine_settings, hooks)
            refine_loss = trace.losses[-1]
        else:
            refine_loss = None
        lap("refine")

        baked = bake(mesh, texture_field.color, bake_config, hooks)
        lap("bake")
        timings = timer.finish()
        world = baked.transformed(frame.world_from_canonical)
        metrics = {
            "method": "gtr",
            "checkpoint": weights.source,
            "seconds": timings["total"],
            "faces": world.num_faces,
            "vertices": world.num_vertices,
            "refine_iterations": refine_settings.iterations,
            "refine_l1": None if refine_loss is None else round(refine_loss, 5),
        }
        return GTRResult(mesh=world, canonical_mesh=baked, frame=frame, field=tri_field, texture_field=texture_field,
                         views=views, warnings=warnings, timings=timings, metrics=metrics)
