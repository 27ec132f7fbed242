"""The ``gtr`` pipeline method end to end, with the parity fixture's small random-weight model.

Random weights make no meaningful shape, so these tests check the plumbing with real numbers: the canonical frame,
the generator input, the mesh at the configured level, refinement, baking, the way back to the user's world, the
method choice, CLI flags and outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.bake import BakeConfig
from backend.cameras import orbit_cameras
from backend.errors import InputError
from backend.field import density_grid
from backend.gtr.checkpoint import Weights, build_model, save_weights
from backend.gtr.config import SMALL
from backend.gtr.rig import RigConfig, canonical_frame, square_view
from backend.gtr.run import GTRSettings, model_inputs, reconstruct_gtr
from backend.pipeline import choose_method, config_from_options, reconstruct
from backend.refine import GTRRefineConfig
from backend.synthetic import render_view
from backend.views import Job, View

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURE = REPO / "tests" / "data" / "parity_small.safetensors"
SIZE = 64


def _small_weights(config) -> Weights:
    ref = load_file(FIXTURE)
    part = lambda p: {k[len(p) :]: v for k, v in ref.items() if k.startswith(p)}  # noqa: E731
    return Weights(part("pipeline.generator."), part("pipeline.field."), config, "parity_small")


@pytest.fixture(scope="module")
def scene_job() -> Job:
    """Six Z-up views of the procedural object at an off-centre position (the world is shifted by +2 in x)."""
    cams = orbit_cameras(6, 4.0, 30.0, SIZE, elevations_degrees=(20.0, -10.0))
    views = []
    shift = np.eye(4)
    shift[0, 3] = -2.0  # world point p is seen where the scene point p − (2, 0, 0) was
    for k, cam in enumerate(cams):
        rgb, alpha, _ = render_view(cam, supersample=1)
        views.append(View(f"v{k}", replace(cam, world_to_camera=cam.world_to_camera @ shift), rgb, alpha))
    return Job(views=views, options={}, source="test")


def _level_for(job: Job, weights: Weights, rig: RigConfig) -> float:
    """A level the random model's density crosses on these inputs (its 90th percentile)."""
    frame = canonical_frame(job.views, job.bounds, rig, "cpu")
    views = [square_view(frame.view_to_canonical(v), weights.config.input_size) for v in job.views]
    generator, field = build_model(weights)
    with torch.no_grad():
        planes = generator(model_inputs(views)[2])[0]
    return float(torch.quantile(density_grid(field.on(planes), 32).flatten(), 0.9))


@pytest.fixture(scope="module")
def weights(scene_job) -> Weights:
    w = _small_weights(replace(SMALL, input_size=SIZE))
    return replace(w, config=replace(w.config, mesh_level=_level_for(scene_job, w, RigConfig())))


def test_gtr_method_runs_and_returns_to_world(scene_job, weights):
    settings = GTRSettings(refine=GTRRefineConfig(iterations=3, raster_size=SIZE))
    out = reconstruct_gtr(scene_job, weights, settings, BakeConfig(texture="vertex"), torch.device("cpu"))
    assert out.mesh.num_faces > 100
    assert out.mesh.vertex_colors is not None and out.mesh.vertex_colors.shape == (out.mesh.num_vertices, 3)
    # The canonical mesh lies in the model's box; mapped back it lies around the object's world position.
    canon = out.canonical_mesh.vertices.numpy()
    assert np.abs(canon).max() <= 1.0 + 2 / 31 + 1e-5
    world = out.mesh.vertices.numpy()
    np.testing.assert_allclose(world, out.frame.to_world_points(canon), atol=1e-4)
    centre = world.mean(0)
    assert abs(centre[0] - 2.0) < 1.0 and abs(centre[1]) < 1.0 and abs(centre[2]) < 1.0
    # Z-up world → Y-up model: the up axis is preserved through the round trip.
    np.testing.assert_allclose(out.frame.to_canonical_points(np.array([[2.0, 0.0, 1.0]]))[0, [0, 2]], 0, atol=0.2)
    assert out.frame.to_canonical_points(np.array([[2.0, 0.0, 1.0]]))[0, 1] > 0.5
    assert all(v.rgb.shape == (SIZE, SIZE, 3) for v in out.views)
    assert np.isfinite(out.metrics["refine_l1"])
    assert out.timings["generate"] >= 0 and out.metrics["method"] == "gtr"


def test_choose_method(monkeypatch):
    monkeypatch.delenv("GTR_CHECKPOINT", raising=False)
    assert choose_method({}) == ("fit", None)
    assert choose_method({"method": "fit", "checkpoint": "w.pth"}) == ("fit", None)
    assert choose_method({"checkpoint": "w.pth"}) == ("gtr", "w.pth")
    with pytest.raises(InputError, match="needs a checkpoint"):
        choose_method({"method": "gtr"})
    with pytest.raises(InputError, match="unknown method"):
        choose_method({"method": "magic"})
    monkeypatch.setenv("GTR_CHECKPOINT", "/x/w.safetensors")
    assert choose_method({}) == ("gtr", "/x/w.safetensors")


def test_pipeline_dispatches_to_gtr(scene_job, weights, tmp_path):
    path = save_weights(weights, tmp_path / "small.safetensors")
    options = {"method": "gtr", "checkpoint": str(path), "texture": "vertex"}
    config = config_from_options(options)
    config = replace(config, gtr=replace(config.gtr, refine=GTRRefineConfig(iterations=2, raster_size=SIZE)))
    result = reconstruct(replace(scene_job, options=options), config, torch.device("cpu"))
    assert result.metrics["method"] == "gtr" and result.occupancy is None
    assert result.mesh.num_faces > 100
    assert 0 < result.metrics["train_psnr"] < 60


def _write_gtr_folder(folder: Path, views: list[View]) -> None:
    from PIL import Image

    folder.mkdir()
    for k, v in enumerate(views):
        rgba = np.concatenate([v.rgb, v.mask[..., None]], -1)
        Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(folder / f"rgb_{k:03d}.png")
        rows = "\n".join(" ".join(f"{x:.8f}" for x in row) for row in v.camera.world_to_camera)
        K = v.camera.K
        (folder / f"cam_{k:03d}.txt").write_text(
            f"extrinsic\n{rows}\n\nintrinsic\n{K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]} {SIZE} {SIZE}\n"
        )


@pytest.mark.slow
def test_cli_gtr_method(scene_job, weights, tmp_path):
    folder = tmp_path / "views"
    _write_gtr_folder(folder, scene_job.views[:3])
    ckpt = save_weights(weights, tmp_path / "small.safetensors")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "backend", "reconstruct", str(folder), "-o", str(out), "--method", "gtr",
           "--checkpoint", str(ckpt), "--formats", "npz,obj", "--quiet", "--device", "cpu",
           "--mesh-resolution", "32", "--refine-iterations", "3"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "gtr" and metrics["faces"] > 100
    assert any("3 views" in w or "view" in w for w in metrics["warnings"])  # 3 views: unlike the 6-view rig
    assert "warning:" in proc.stderr
    assert (out / "mesh.obj").is_file() and (out / "mesh.npz").is_file()
    assert metrics["refine_iterations"] == 3

    missing = subprocess.run(
        [sys.executable, "-m", "backend", "reconstruct", str(folder), "-o", str(tmp_path / "o2"), "--method", "gtr",
         "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "GTR_CHECKPOINT": ""},
    )
    assert missing.returncode == 2
    assert "checkpoint" in missing.stderr and "Traceback" not in missing.stderr


def test_polish_trains_the_triplane_only(scene_job, weights):
    """Polish adapts the generated triplane; the decoder MLPs (the network's, shared by every texel) stay as loaded."""
    settings = GTRSettings(refine=GTRRefineConfig(iterations=0), polish_steps=2)
    out = reconstruct_gtr(scene_job, weights, settings, BakeConfig(texture="vertex"), torch.device("cpu"))
    plain = reconstruct_gtr(scene_job, weights, replace(settings, polish_steps=0), BakeConfig(texture="vertex"),
                            torch.device("cpu"))
    assert out.timings["polish"] > 0 and "polish" not in plain.timings
    change = (out.field.planes - plain.field.planes).detach().abs().max()
    assert 0 < float(change) < 1.0  # two small steps moved the generated triplane
    for name in ("mlp_sigma", "mlp_color"):
        for key, value in getattr(out.field, name).state_dict().items():
            assert torch.equal(value, weights.field[f"decoder.field.{name}.{key}"]), f"{name}.{key} changed"
    assert not out.field.planes.requires_grad
    assert not any(p.requires_grad for p in out.field.parameters())


@pytest.mark.gpu
def test_gtr_method_on_cuda(scene_job, weights):
    settings = GTRSettings(refine=GTRRefineConfig(iterations=3, raster_size=SIZE))
    out = reconstruct_gtr(scene_job, weights, settings, BakeConfig(texture="vertex"), torch.device("cuda"))
    cpu = reconstruct_gtr(scene_job, weights, settings, BakeConfig(texture="vertex"), torch.device("cpu"))
    assert out.mesh.num_faces > 100
    assert abs(out.mesh.num_faces - cpu.mesh.num_faces) <= 0.01 * cpu.mesh.num_faces


def test_precision_policy_covers_generator_and_refinement(scene_job, weights):
    """The TF32 flags seen inside the generator's and the decoder's forward passes are the policy's; the caller's
    flags are back afterwards."""
    from backend.field import MLP
    from backend.gtr.generator import Generator

    seen: dict[str, set] = {"Generator": set(), "MLP": set()}

    def record(module, args, output):
        if isinstance(module, (Generator, MLP)):
            seen[type(module).__name__].add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        settings = GTRSettings(refine=GTRRefineConfig(iterations=1, raster_size=SIZE), precision="highest")
        reconstruct_gtr(scene_job, weights, settings, BakeConfig(texture="vertex"), torch.device("cpu"))
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        handle.remove()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen == {"Generator": {(False, False)}, "MLP": {(False, False)}}
    assert after == (True, True)
