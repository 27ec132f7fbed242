"""Training on the committed procedural fixture (tests/data/procedural_tiny): the loss falls, stage 2's gradients
reach the generator through marching cubes and the mesh renderer, resuming is exact, DDP over two gloo processes
equals one process with the doubled batch, a SIGTERM leaves a checkpoint to resume from."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.dataset import read_index
from backend.field import grid_points
from backend.gtr.checkpoint import read_checkpoint
from backend.train.config import PRESETS
from backend.train.data import TrainingSet
from backend.train.engine import train
from backend.train.model import TrainModel

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "procedural_tiny"
TINY = PRESETS["tiny"]


def losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_stage1_loss_falls(tmp_path):
    config = replace(TINY, steps=60, checkpoint_every=60)
    result = train(FIXTURE, tmp_path, config, device="cpu")
    curve = losses(tmp_path)
    first = np.mean([curve[s] for s in range(1, 11)])
    last = np.mean([curve[s] for s in range(51, 61)])
    # Measured (CPU-2B): first ten steps 0.83, last ten 0.43 (a 48 % fall).
    assert last < 0.65 * first, (first, last)
    assert result.step == 60 and not result.stopped and not result.broken
    assert (tmp_path / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step_0000020.png", "step_0000040.png",
                                                                        "step_0000060.png"]


def test_trained_weights_are_a_gtr_checkpoint(tmp_path):
    train(FIXTURE, tmp_path, replace(TINY, steps=2), device="cpu")
    weights = read_checkpoint(tmp_path / "model.safetensors")
    assert weights.config == TINY.model
    model = TrainModel(TINY)
    model.load_weights(weights)  # strict: every key and shape of the generator and the decoder
    assert weights.tensor_count == len(model.generator.state_dict()) + len(model.field.state_dict())


def stage2_model(level_quantile: float = 0.9) -> tuple[TrainModel, TrainingSet]:
    """A fresh tiny model for stage 2 whose surface level sits at its initial density's 90th percentile, so the
    marching cubes find a surface without any stage-1 training."""
    config = replace(TINY, stage=2, mesh_resolution=24)
    torch.manual_seed(0)
    model = TrainModel(config)
    data = TrainingSet(read_index(FIXTURE), config)
    batch = data.batch(0, 0, 1)
    with torch.no_grad():
        planes = model.generator(batch.inputs)
        density = model.field.on(planes[0]).density(grid_points(24))
    level = float(torch.quantile(density, level_quantile))
    config = replace(config, model=replace(config.model, mesh_level=level))
    model.config = config
    return model, TrainingSet(read_index(FIXTURE), config)


def test_stage2_gradients_reach_the_generator_through_marching_cubes():
    model, data = stage2_model()
    # Only the coverage term: it depends on the vertices alone, i.e. on the density through marching cubes.
    model.config = replace(model.config, image_weight=0.0, depth_weight=0.0, normal_weight=0.0)
    batch = data.batch(0, 0, 1)
    out = model(batch)
    assert out["faces"] > 100
    out["loss"].backward()
    assert abs(out["loss"].item() - out["mask"]) < 1e-6  # mask_weight 1, the mean over the batch
    sigma = model.field.decoder.field.mlp_sigma.layers[0].weight.grad
    colour = model.field.decoder.field.mlp_color.layers[0].weight.grad
    conv = model.generator.conv_proj.weight.grad
    assert sigma is not None and sigma.abs().sum() > 0
    assert colour is None or colour.abs().sum() == 0  # the coverage does not depend on colours
    assert conv is not None and conv.abs().sum() > 0
    # The gradient is a descent direction: a small step against it lowers the coverage loss.
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
        after = float(model(batch)["loss"])
    assert after < out["loss"].item(), (after, out["loss"].item())


@pytest.mark.slow
def test_stage2_trains_from_a_stage1_checkpoint(tmp_path):
    stage1 = tmp_path / "stage1"
    train(FIXTURE, stage1, replace(TINY, steps=60), device="cpu")
    weights = read_checkpoint(stage1 / "model.safetensors")
    model = TrainModel(replace(TINY, model=weights.config))
    model.load_weights(weights)
    batch = TrainingSet(read_index(FIXTURE), TINY).batch(0, 0, 1)
    with torch.no_grad():
        density = model.field.on(model.generator(batch.inputs)[0]).density(grid_points(32))
    level = float(torch.quantile(density, 0.9))  # a briefly trained model is soft: take its densest tenth
    stage2 = tmp_path / "stage2"
    config = replace(TINY, stage=2, steps=12, log_every=1, mesh_level=level)
    result = train(FIXTURE, stage2, config, init=stage1 / "model.safetensors", device="cpu")
    rows = [json.loads(r) for r in (stage2 / "log.jsonl").read_text().splitlines()]
    assert result.step == 12
    assert all(r["faces"] > 100 for r in rows), [r["faces"] for r in rows]
    assert all(np.isfinite([r["mse"], r["mask"], r["depth"], r["normal"]]).all() for r in rows)
    assert read_checkpoint(stage2 / "model.safetensors").config.mesh_level == pytest.approx(level)
    first, last = np.mean([r["loss"] for r in rows[:4]]), np.mean([r["loss"] for r in rows[-4:]])
    assert last < first, (first, last)

    # The trained weights plug straight into the gtr method (texture refinement off: it is not what this tests).
    out = tmp_path / "mesh"
    run = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(FIXTURE / "procedural_0000"), "-o",
                          str(out), "--method", "gtr", "--checkpoint", str(stage2 / "model.safetensors"),
                          "--refine-iterations", "0", "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "gtr" and metrics["faces"] > 100
    assert (out / "mesh.glb").is_file()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = replace(TINY, steps=6, checkpoint_every=100)
    whole = tmp_path / "whole"
    train(FIXTURE, whole, config, device="cpu")

    parts = tmp_path / "parts"
    stop = threading.Event()

    def progress(stage, step, total, message):
        if step == 3:
            stop.set()

    first = train(FIXTURE, parts, config, device="cpu", progress=progress, stop=stop)
    assert first.stopped and first.step == 3
    assert json.loads((parts / "latest.json").read_text())["step"] == 3
    second = train(FIXTURE, parts, config, device="cpu", resume=True)
    assert second.step == 6 and not second.stopped
    assert losses(parts) == losses(whole)  # every step's loss, bit for bit
    a, b = read_checkpoint(whole / "model.safetensors"), read_checkpoint(parts / "model.safetensors")
    assert all(torch.equal(a.generator[k], b.generator[k]) for k in a.generator)


def test_resume_refuses_other_settings(tmp_path):
    train(FIXTURE, tmp_path, replace(TINY, steps=2), device="cpu")
    from backend.errors import InputError

    with pytest.raises(InputError, match="learning_rate"):
        train(FIXTURE, tmp_path, replace(TINY, steps=4, learning_rate=1e-2), device="cpu", resume=True)


@pytest.mark.slow
def test_broken_objects_are_skipped_and_reported(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    entries = read_index(data)
    (entries[1].folder / "transforms.json").write_text("{not json")
    from backend.dataset import check_dataset

    report = check_dataset(data)
    assert report.broken.keys() == {entries[1].name}
    assert len(report.good) == len(entries) - 1
    cli = subprocess.run([sys.executable, "-m", "backend", "dataset", "check", str(data)], capture_output=True,
                         text=True)
    assert cli.returncode == 1 and f"broken: {entries[1].name}" in cli.stdout
    result = train(data, tmp_path / "run", replace(TINY, steps=4), device="cpu")
    assert set(result.broken) == {entries[1].name}


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    train(FIXTURE, tmp_path, replace(TINY, steps=2), device="cpu")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    common = [str(FIXTURE), "--config", "tiny", "--steps", "4", "--quiet", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "backend", "train"]
    two = subprocess.run([*torchrun, *common, "-o", str(tmp_path / "two"), "--batch-size", "1"],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "backend", "train", *common, "-o", str(tmp_path / "one"),
                          "--batch-size", "2"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a = read_checkpoint(tmp_path / "one" / "model.safetensors")
    b = read_checkpoint(tmp_path / "two" / "model.safetensors")
    # Measured: at most 6e-8 apart after 4 steps (the order of the gradient all-reduce's additions).
    for part in ("generator", "field"):
        for key, value in getattr(a, part).items():
            assert torch.allclose(value, getattr(b, part)[key], atol=1e-6, rtol=0), key
    assert [round(v, 5) for v in losses(tmp_path / "one").values()] == \
        [round(v, 5) for v in losses(tmp_path / "two").values()]


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_continues(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "backend", "train", str(FIXTURE), "-o", str(run), "--config", "tiny",
            "--steps", "400", "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").is_file():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped_at = json.loads((run / "latest.json").read_text())["step"]
    assert 0 < stopped_at < 400 and "stopped early" in err and "SIGTERM" in err
    more = [a if a != "400" else str(stopped_at + 3) for a in args] + ["--resume"]
    resumed = subprocess.run(more, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert max(losses(run)) == stopped_at + 3
    assert os.path.getsize(run / "model.safetensors") > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        config = replace(TINY, gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = TrainModel(config)
        batch = TrainingSet(read_index(FIXTURE), config).batch(0, 0, 1)
        model(batch)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.generator.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


@pytest.mark.gpu
def test_both_stages_train_on_cuda_in_bf16(tmp_path):
    stage1 = tmp_path / "stage1"
    result = train(FIXTURE, stage1, replace(TINY, steps=30, log_every=1), device="cuda")
    assert result.step == 30 and np.isfinite(result.last["loss"])
    curve = losses(stage1)
    assert np.mean([curve[s] for s in range(21, 31)]) < np.mean([curve[s] for s in range(1, 11)])
    result = train(FIXTURE, tmp_path / "stage2", replace(TINY, stage=2, steps=4, mesh_level=0.5),
                   init=stage1 / "model.safetensors", device="cuda")
    assert result.step == 4 and np.isfinite(result.last["loss"])
