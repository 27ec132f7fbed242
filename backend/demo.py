"""The embedded default: build a procedural textured object, reconstruct it from a camera ring, score it.

Writes ``mesh.glb`` (+ ``mesh.npz``), ``preview.png`` (a held-out input view beside the reconstruction) and
``metrics.json`` (held-out ``psnr`` / ``ssim``, ``chamfer_l1`` / ``fscore`` against the known object, ``seconds``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .evaluate import evaluate, side_by_side
from .export import save_png
from .pipeline import config_from_options, reconstruct, resolve_device, write_outputs
from .progress import Hooks
from .synthetic import SceneConfig, make_scene
from .views import Job


def run_demo(
    out_dir: Path,
    *,
    size: int = 160,
    options: dict | None = None,
    device_name: str = "auto",
    hooks: Hooks | None = None,
    scene: SceneConfig | None = None,
) -> dict:
    start = time.perf_counter()
    hooks = hooks or Hooks()
    device = resolve_device(device_name)
    config = config_from_options(dict(options or {}))  # bad options fail here, before any work
    hooks.report("scene", 0, 1, "rendering the sample object")
    scene_data = make_scene(scene or SceneConfig(size=size))
    hooks.report("scene", 1, 1, f"{len(scene_data.train)} views")
    options = dict(options or {})
    # Images and masks only: the renderer's depth maps stay out, as a user's photos would have none.
    views = [replace(v, depth=None) for v in scene_data.train]
    job = Job(views=views, options=options, source="demo")
    result = reconstruct(job, config, device, hooks)
    gt_mesh = (scene_data.gt_vertices, scene_data.gt_faces)
    evaluation = evaluate(result, scene_data.test, gt_mesh, volume_views=0, hooks=hooks)
    seconds = round(time.perf_counter() - start, 2)
    extra = {key: evaluation.metrics[key] for key in ("psnr", "ssim", "chamfer_l1", "fscore", "normal_consistency")}
    extra["psnr_per_view"] = evaluation.metrics["psnr_per_view"]
    extra["seconds"] = seconds
    extra["reconstruct_seconds"] = result.metrics["seconds"]
    metrics = write_outputs(result, Path(out_dir), config, extra, hooks)
    gt, pred = evaluation.pairs[0]
    save_png(Path(out_dir) / "preview.png", side_by_side(gt, pred))
    return metrics
