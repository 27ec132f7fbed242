"""Quality guard: one small end-to-end reconstruction whose scores must stay close to what they are today.

The procedural object (:mod:`backend.synthetic`) is reconstructed from its camera ring with the ``draft`` preset
shrunk to CI size, then scored on held-out views, as ``backend demo`` does. As in every preset, the fit, the
geometry refinement and the texture refinement run a fixed number of steps with their own seeds, so a loaded
machine gives the same result as an idle one, only later. torch keeps its default thread count (as in CI).
It takes about 20 s on an idle 2-core CPU (12 min under a load average of 8).

The thresholds sit about 1.5 dB (PSNR) and 0.05 (F-score) below the values measured when the guard was written,
so a real regression fails while run-to-run noise (measured below) does not. When a change improves quality on
purpose, re-measure and raise them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.evaluate import evaluate
from backend.pipeline import PRESETS, PipelineConfig, reconstruct
from backend.synthetic import SceneConfig, make_scene
from backend.views import Job

SCENE = SceneConfig(size=64, train_views=12, test_views=3)
"""The object at 64² from 12 ring views; 3 held-out views between them."""

FIT_STEPS = 300
REFINE_ITERATIONS = 80


def guard_config() -> PipelineConfig:
    """``draft`` at CI size (its geometry refinement as it is)."""
    draft = PRESETS["draft"]
    return replace(
        draft,
        fit=replace(
            draft.fit,
            steps=FIT_STEPS,
            rays_per_step=1024,
            hull_resolution=64,
            field=replace(draft.fit.field, resolution=96),
        ),
        extract=replace(draft.extract, resolution=64),
        refine=replace(draft.refine, iterations=REFINE_ITERATIONS, points_per_step=8192),
    )


@pytest.fixture(scope="module")
def guard():
    scene = make_scene(SCENE)
    torch.manual_seed(0)
    np.random.seed(0)
    # Images and masks only, as ``backend demo`` gives them: a user's photos have no depth.
    views = [replace(v, depth=None) for v in scene.train]
    result = reconstruct(Job(views=views, source="quality-guard"), guard_config(), torch.device("cpu"))
    evaluation = evaluate(result, scene.test, (scene.gt_vertices, scene.gt_faces), volume_views=2)
    shown = {k: v for k, v in evaluation.metrics.items() if isinstance(v, float)}
    print(f"\nquality guard: {shown}\nreconstruct: {result.metrics}")
    return result, evaluation.metrics


def test_fixed_step_budget(guard):
    """No time limit applied: the scores below come from the full, fixed amount of work."""
    result, _ = guard
    assert result.metrics["fit_steps"] == FIT_STEPS
    assert result.metrics["geometry_iterations"] == PRESETS["draft"].geometry.iterations
    assert result.metrics["refine_iterations"] == REFINE_ITERATIONS


def test_quality_guard(guard):
    _, m = guard
    # Measured 2026-12-01 on the 2-core CI machine (torch's default 2 threads, seed 0) with draft's fit taking 256
    # samples per box diagonal and 50 geometry iterations (issue 9's time budget): psnr 29.95, ssim 0.9664, fscore
    # 0.9657, chamfer_l1 0.0037, volume_psnr 28.82. Before (512 per diagonal, 100 geometry iterations): psnr 30.86,
    # ssim 0.9702, fscore 0.9697, chamfer_l1 0.0034, volume_psnr 28.89; with the TV weight at 0.01: psnr 30.63,
    # fscore 0.9557; with the distortion weight at 0.1: psnr 28.98, fscore 0.8392. Before issue 9, seed 1 instead
    # of 0, as a stand-in for another CPU's rounding, moved psnr by -0.83 dB and volume_psnr by -0.95 dB.
    assert m["psnr"] > 29.0  # measured 29.95
    assert m["ssim"] > 0.955  # measured 0.9664
    assert m["fscore"] > 0.92  # measured 0.9657
    assert m["chamfer_l1"] < 0.0044  # measured 0.0037
    assert m["volume_psnr"] > 27.4  # measured 28.82
