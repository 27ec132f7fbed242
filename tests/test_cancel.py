"""Cancel: every stage of a real (tiny) run honours ``hooks.cancel()``, and a cancelled run leaves no file behind.

A full run is recorded once (every ``(stage, step)`` it reports). Each test then runs the same job again and cancels
at a chosen report, from the progress callback (the run must stop at the very next report) or from another thread
(``threading.Timer``; the time until ``Cancelled`` arrives is measured and bounded). The flow is the ``eval``
command's: ``reconstruct`` → ``evaluate`` → ``write_outputs`` into an output folder that does not exist yet; the
real CLI is run once (exit code 130). The ``gtr`` method runs on a tiny random-weight checkpoint.

Sizes are far below ``draft`` so that one run of the ``fit`` method takes about 3 s on a busy 2-core CPU.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backend import cli
from backend import export as export_module
from backend.errors import Cancelled
from backend.evaluate import evaluate
from backend.pipeline import PRESETS, PipelineConfig, Reconstruction, reconstruct, write_outputs
from backend.progress import STAGES, Hooks
from backend.synthetic import write_scene_as_transforms
from backend.views import Job

CPU = torch.device("cpu")
FIT_STAGES = ("hull", "fit", "extract", "geometry", "refine", "bake", "metrics", "evaluate", "write")
"""The stages the fit method's eval flow reports, in order of their first report."""
GTR_STAGES = ("checkpoint", "normalise", "hull", "generate", "extract", "refine", "bake", "metrics", "evaluate",
              "write")
CANCEL_LATENCY_BOUND_S = 1.5
"""Longest wait from ``hooks.cancel()`` (another thread) to ``Cancelled`` in any stage of the tiny run. Measured on
a 2-core CPU shared with other jobs (load average ≈ 9): worst 0.03 s (metrics, evaluate) with one torch thread as
here; 0.64 s (evaluate) with torch's default threads. The bound is about twice the latter."""


def tiny_config() -> PipelineConfig:
    """``draft`` shrunk until a whole run takes seconds: 20 fit steps, 16² planes, 24³ grids, 20 geometry steps,
    10 refinements."""
    draft = PRESETS["draft"]
    return replace(
        draft,
        max_image_size=32,
        normalise=replace(draft.normalise, hull_resolution=24),
        fit=replace(
            draft.fit,
            steps=20,
            rays_per_step=128,
            hull_resolution=24,
            field=replace(draft.fit.field, resolution=16),
            render=replace(draft.fit.render, samples_per_diagonal=96),
        ),
        extract=replace(draft.extract, resolution=24, depth_map_size=24, chunk=4096),
        geometry=replace(draft.geometry, iterations=20, max_size=32),
        refine=replace(draft.refine, iterations=10, points_per_step=512),
        bake=replace(draft.bake, chunk=256),
        gtr=replace(
            draft.gtr,
            mesh_resolution=24,
            target_faces=300,
            rig=replace(draft.gtr.rig, hull_resolution=24),
            refine=replace(draft.gtr.refine, iterations=4, raster_size=48),
        ),
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder:
    """A progress callback that records ``(stage, step)`` and can cancel after report number ``cancel_at``
    (0-based): inline, or (``thread``) from a ``threading.Timer`` started there, while the run goes on."""

    def __init__(self, cancel_at: int | None = None, thread: bool = False):
        self.hooks = Hooks(progress=self)
        self.seen: list[tuple[str, int]] = []
        self.times: list[float] = []
        self.cancel_at = cancel_at
        self.thread = thread
        self.cancelled_at: float | None = None
        self.timer: threading.Timer | None = None
        self.result: Reconstruction | None = None

    def __call__(self, stage: str, step: int, total: int, message: str) -> None:
        self.seen.append((stage, step))
        self.times.append(time.perf_counter())
        if self.cancel_at is not None and len(self.seen) - 1 == self.cancel_at:
            if self.thread:
                self.timer = threading.Timer(0.0, self._cancel)
                self.timer.start()
            else:
                self.hooks.cancel()

    def _cancel(self) -> None:
        self.cancelled_at = time.perf_counter()
        self.hooks.cancel()


def run_flow(tiny_scene, out_dir: Path, hooks: Hooks, options: dict | None = None) -> Reconstruction:
    """The ``eval`` command's flow on the tiny scene: reconstruct → evaluate → write_outputs (seed 0)."""
    torch.manual_seed(0)
    config = tiny_config()
    result = reconstruct(Job(views=tiny_scene.train, options=dict(options or {}), source="test"), config, CPU, hooks)
    evaluation = evaluate(result, tiny_scene.test, volume_views=1, hooks=hooks)
    write_outputs(result, out_dir, config, {"psnr": evaluation.metrics["psnr"]}, hooks)
    return result


def leftovers(out_dir: Path) -> list[str]:
    """Every file (temporary ones included) under ``out_dir``; [] when it does not exist."""
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) if out_dir.exists() else []


def middle_report(seen: list[tuple[str, int]], stage: str) -> int:
    """Index of a report inside ``stage``'s loop (its middle one, never its last), or, for a stage that reports
    once, of the report just before it (a cancel at the stage boundary)."""
    reports = [i for i, (s, _) in enumerate(seen) if s == stage]
    return reports[(len(reports) - 1) // 2] if len(reports) > 1 else reports[0] - 1


def first_seen(seen: list[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(stage for stage, _ in seen))


@pytest.fixture(scope="module")
def fit_run(tiny_scene, tmp_path_factory) -> Recorder:
    recorder = Recorder()
    out = tmp_path_factory.mktemp("fit") / "out"
    start = time.perf_counter()
    recorder.result = run_flow(tiny_scene, out, recorder.hooks)
    print(f"\nfit flow: {time.perf_counter() - start:.1f} s, {len(recorder.seen)} reports")
    assert {"mesh.npz", "mesh.glb", "metrics.json"} <= set(leftovers(out))
    return recorder


@pytest.fixture(scope="module")
def gtr_run(tiny_scene, tiny_gtr_checkpoint, tmp_path_factory) -> Recorder:
    recorder = Recorder()
    out = tmp_path_factory.mktemp("gtr") / "out"
    start = time.perf_counter()
    run_flow(tiny_scene, out, recorder.hooks, {"method": "gtr", "checkpoint": str(tiny_gtr_checkpoint)})
    print(f"\ngtr flow: {time.perf_counter() - start:.1f} s, {len(recorder.seen)} reports")
    assert {"mesh.npz", "mesh.glb", "metrics.json"} <= set(leftovers(out))
    return recorder


def test_every_stage_reports_under_a_known_name(fit_run, gtr_run):
    assert first_seen(fit_run.seen) == FIT_STAGES
    assert first_seen(gtr_run.seen) == GTR_STAGES
    assert set(FIT_STAGES + GTR_STAGES) <= set(STAGES)
    fit_counts = {stage: sum(s == stage for s, _ in fit_run.seen) for stage in FIT_STAGES}
    # per view (5 train views; 1 test view: a mesh and a volume render) or per chunk: hull 3 × 5 carvings, fit
    # every 10 of 20 steps, extract 4 + 5 depth maps, refine 5 views + 1 per 10 iterations, bake colour chunks,
    # metrics 5 views + 1
    assert fit_counts["hull"] == 15 and fit_counts["fit"] == 2 and fit_counts["extract"] == 4 + 5
    assert fit_counts["refine"] == 5 + 1 and fit_counts["bake"] >= 2 and fit_counts["metrics"] == 6
    assert fit_counts["evaluate"] == 2 and fit_counts["write"] == 1
    gtr_counts = {stage: sum(s == stage for s, _ in gtr_run.seen) for stage in GTR_STAGES}
    # generator: 1 + one per transformer block (2) + 1; refine: 5 views, then 4 iterations + 1
    assert gtr_counts["generate"] == 4 and gtr_counts["refine"] == 5 + 5 and gtr_counts["extract"] >= 2


@pytest.mark.parametrize("stage", FIT_STAGES)
def test_cancel_inside_each_stage_writes_nothing(tiny_scene, fit_run, tmp_path, stage):
    k = middle_report(fit_run.seen, stage)
    recorder = Recorder(cancel_at=k)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run_flow(tiny_scene, out, recorder.hooks)
    assert recorder.seen == fit_run.seen[: k + 1]  # stopped at the very next report, which is in ``stage``
    assert fit_run.seen[k + 1][0] == stage
    assert leftovers(out) == [] and not out.exists()


@pytest.mark.parametrize("stage", ["generate", "extract", "refine"])
def test_cancel_inside_gtr_stages_writes_nothing(tiny_scene, tiny_gtr_checkpoint, gtr_run, tmp_path, stage):
    k = middle_report(gtr_run.seen, stage)
    recorder = Recorder(cancel_at=k)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run_flow(tiny_scene, out, recorder.hooks, {"method": "gtr", "checkpoint": str(tiny_gtr_checkpoint)})
    assert recorder.seen == gtr_run.seen[: k + 1]
    assert gtr_run.seen[k + 1][0] == stage
    assert leftovers(out) == [] and not out.exists()


@pytest.mark.parametrize("stage", FIT_STAGES[:-1])  # after the ``write`` report the files are written, by design
def test_cancel_from_another_thread(tiny_scene, fit_run, tmp_path, stage):
    reports = [i for i, (s, _) in enumerate(fit_run.seen) if s == stage]
    k = reports[(len(reports) - 1) // 2]  # the timer fires while the run works on past this report
    recorder = Recorder(cancel_at=k, thread=True)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run_flow(tiny_scene, out, recorder.hooks)
    latency = time.perf_counter() - recorder.cancelled_at
    print(f"\ncancel in {stage}: Cancelled {latency:.3f} s after hooks.cancel(), past report {recorder.seen[-1]}")
    assert latency < CANCEL_LATENCY_BOUND_S
    assert recorder.seen == fit_run.seen[: len(recorder.seen)] and len(recorder.seen) > k
    assert leftovers(out) == [] and not out.exists()


def test_cli_cancel_exits_130_and_leaves_no_file(tiny_scene, tmp_path, monkeypatch, capsys):
    dataset = write_scene_as_transforms(tiny_scene, tmp_path / "scene")
    monkeypatch.setitem(PRESETS, "draft", tiny_config())
    recorder = Recorder()

    def cancel_in_refine(stage, step, total, message):
        recorder(stage, step, total, message)
        if stage == "refine":
            recorder.hooks.cancel()

    recorder.hooks.progress = cancel_in_refine
    monkeypatch.setattr(cli, "_hooks", lambda args: (recorder.hooks, None))
    out = tmp_path / "out"
    code = cli.main(["reconstruct", str(dataset), "--output", str(out), "--preset", "draft", "--device", "cpu"])
    assert code == cli.EXIT_CANCELLED
    assert "cancelled" in capsys.readouterr().err
    assert [s for s, _ in recorder.seen].count("refine") == 1
    assert not out.exists()  # the CLI checks the folder up front but makes it only when there is something to write


@pytest.mark.parametrize("failing_replace", [1, 2, 3])
def test_interrupted_write_leaves_no_file(tiny_scene, fit_run, tmp_path, monkeypatch, failing_replace):
    """Ctrl+C while the files are renamed into place (npz, glb, then metrics.json): nothing stays behind."""
    calls = []
    real_replace = export_module.os.replace

    def replace_or_interrupt(src, dst):
        calls.append(dst)
        if len(calls) == failing_replace:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", replace_or_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_outputs(fit_run.result, out, tiny_config())
    assert len(calls) == failing_replace
    assert leftovers(out) == []
