"""``python -m backend serve`` as the add-on sees it: a real subprocess, JSON lines over pipes, real job folders.

Every read waits at most :data:`RECV_TIMEOUT_S`, so a hang fails a test instead of blocking the suite. The jobs
are the tiny procedural scene (5 views at 32²) written as a ``job.json`` folder; job options alone make them
short (``fit_steps`` 2) or long enough to cancel (``fit_steps`` 1200). The server runs with one torch thread
(``OMP_NUM_THREADS=1``), several times faster than the default for such tiny runs on a shared 2-core machine.
Also here: the progress pacer (throttle + ETA) and the hull preview mesh, which exist for the server.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backend
from backend import protocol
from backend.preview import hull_mesh
from backend.progress import STAGES, ProgressPacer
from backend.serve import EXIT_PROTOCOL_MISMATCH
from backend.volume import OccupancyGrid

REPO_ROOT = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_S = 60.0
"""Longest wait for one message (a tiny job takes about 3 s, start-up about 2 s)."""
EXIT_TIMEOUT_S = 15.0
CANCEL_LATENCY_BOUND_S = 1.5
"""From writing ``cancel`` to reading ``cancelled``, a job in its fit stage. Measured 0.27–0.35 s (one fit step at
one torch thread, plus the pipes) on a 2-core CPU shared with other jobs."""

SHORT = {"preset": "draft", "fit_steps": 2, "mesh_resolution": 24, "geometry_iterations": 2, "refine_iterations": 2,
         "device": "cpu"}
"""Job options of a run of about 3 s."""
LONG = dict(SHORT, fit_steps=1200)
"""Job options of a run that is still fitting a minute later (it gets cancelled)."""


class Backend:
    """A ``python -m backend serve`` subprocess: :meth:`send` writes a line, :meth:`recv` reads and checks one."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            env=env,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def send_line(self, text: str) -> None:
        self.process.stdin.write(text.encode("utf-8") + b"\n")
        self.process.stdin.flush()

    def send(self, type_: str, **fields) -> None:
        self.send_line(protocol.encode(protocol.message(type_, **fields)).rstrip("\n"))

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict:
        """The next message, checked by protocol.decode (every line on stdout must be one)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message from the backend within {timeout} s; its log:\n{self.log()}")
        assert line is not None, f"the backend closed its stdout; its log:\n{self.log()}"
        return protocol.decode(line.decode("utf-8"))

    def until(self, *types: str, stage: str | None = None) -> tuple[list[dict], dict]:
        """Messages up to the first of ``types`` (a ``progress`` only if of ``stage``): (the ones before, it)."""
        before = []
        while True:
            msg = self.recv()
            if msg["type"] in types and (stage is None or msg.get("stage") == stage):
                return before, msg
            before.append(msg)

    def handshake(self) -> dict:
        self.send("hello", protocol=protocol.PROTOCOL_VERSION)
        ready = self.recv()
        assert ready["type"] == "ready", ready
        return ready

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the backend did not exit within {timeout} s; its log:\n{self.log()}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_TIMEOUT_S)
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()
        self._log.close()


@pytest.fixture
def fresh_backend(tmp_path):
    server = Backend(tmp_path / "serve.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One handshaken backend shared by the tests that leave it idle."""
    backend_ = Backend(tmp_path_factory.mktemp("serve") / "serve.log")
    backend_.handshake()
    yield backend_
    backend_.close()


def write_job(views, folder: Path, options: dict) -> Path:
    """A job folder: ``images/NNN.png`` (RGBA, alpha = mask) and ``job.json`` with the views' cameras."""
    (folder / "images").mkdir(parents=True)
    entries = []
    for k, view in enumerate(views):
        rgba = np.concatenate([view.rgb, view.mask[..., None]], -1)
        Image.fromarray(np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8), "RGBA").save(
            folder / "images" / f"{k:03d}.png"
        )
        entries.append(
            {
                "image": f"images/{k:03d}.png",
                "world_to_camera": view.camera.world_to_camera.tolist(),
                "K": view.camera.K.tolist(),
            }
        )
    (folder / "job.json").write_text(json.dumps({"version": 1, "views": entries, "options": options}))
    return folder


# ------------------------------------------------------------------------------------------------ conversation


def test_handshake_after_messages_before_hello_then_shutdown(fresh_backend):
    fresh_backend.send("run", job_id="early", job_dir="/nowhere")
    error = fresh_backend.recv()
    assert error["type"] == "error" and error["error_type"] == "ProtocolError" and error["job_id"] == "early"
    assert "send hello first" in error["message"]
    fresh_backend.send_line("hello")  # not JSON
    assert fresh_backend.recv()["error_type"] == "ProtocolError"

    ready = fresh_backend.handshake()
    assert ready["protocol"] == protocol.PROTOCOL_VERSION and ready["backend_version"] == backend.__version__
    assert ready["torch"] == torch.__version__ and ready["cuda"] == torch.cuda.is_available()
    assert ready["device"] == "cpu" if not ready["cuda"] else ready["device"].startswith("cuda:0 (")
    assert isinstance(ready["nvdiffrast"], bool)
    fresh_backend.send("shutdown")
    assert fresh_backend.wait() == 0
    assert "serve: ready" in fresh_backend.log()  # the log went to stderr; stdout held protocol lines only


def test_version_mismatch_is_refused_with_what_to_do(fresh_backend):
    fresh_backend.send("hello", protocol=protocol.PROTOCOL_VERSION + 98)
    error = fresh_backend.recv()
    assert error["type"] == "error" and error["error_type"] == "ProtocolMismatch"
    assert error["message"] == protocol.version_mismatch(protocol.PROTOCOL_VERSION + 98, "add-on")
    assert fresh_backend.wait() == EXIT_PROTOCOL_MISMATCH != 0


@pytest.mark.parametrize(
    "line, says, job_id",
    [
        ("{not json", "not JSON", None),
        ("[1, 2]", "must be a JSON object", None),
        ('{"type": "status"}', "unknown message type 'status'", None),
        ('{"type": "run", "job_id": "m1"}', "lacks field(s) job_dir", "m1"),
        ('{"type": "run", "job_id": 7, "job_dir": "/tmp"}', "run.job_id must be a non-empty string", None),
        ('{"type": "run", "job_id": "m2", "job_dir": "/tmp", "formats": "npz"}', "run.formats must be a list", "m2"),
        ('{"type": "cancelled", "job_id": "m3"}', "a message the backend sends", "m3"),
    ],
)
def test_malformed_line_gets_an_error_and_the_server_goes_on(server, line, says, job_id):
    server.send_line(line)
    error = server.recv()
    assert error["type"] == "error" and error["error_type"] == "ProtocolError"
    assert says in error["message"] and error["job_id"] == job_id
    server.send("hello", protocol=protocol.PROTOCOL_VERSION)
    assert server.recv()["type"] == "ready"


def test_unknown_format_is_an_input_error(server, tmp_path):
    server.send("run", job_id="f1", job_dir=str(tmp_path), formats=["npz", "fbx"])
    error = server.recv()
    assert (error["type"], error["error_type"], error["job_id"]) == ("error", "InputError", "f1")
    assert "fbx" in error["message"] and "npz" in error["fix"]


def test_run_streams_progress_then_previews_then_result(server, tiny_scene, tmp_path):
    job_dir = write_job(tiny_scene.train, tmp_path / "job", SHORT)
    start = time.perf_counter()
    server.send("run", job_id="r1", job_dir=str(job_dir), formats=["npz", "glb", "ply"])
    before, result = server.until("result", "error", "cancelled")
    print(f"\ntiny job: {time.perf_counter() - start:.1f} s, {len(before)} messages")
    assert result["type"] == "result", result
    assert {m["job_id"] for m in before + [result]} == {"r1"}

    progress = [m for m in before if m["type"] == "progress"]
    stages = list(dict.fromkeys(m["stage"] for m in progress))
    assert stages == ["hull", "fit", "extract", "geometry", "refine", "bake", "metrics", "write"]
    assert set(stages) <= set(STAGES)
    metrics_steps = [(m["step"], m["total"]) for m in progress if m["stage"] == "metrics"]
    assert metrics_steps[0] == (0, 5) and metrics_steps[-1] == (5, 5)  # a stage's first and last always come
    assert all(m["eta"] is None or m["eta"] >= 0 for m in progress)
    assert all(m["eta"] == 0 for m in progress if m["step"] >= m["total"])
    assert any(m["eta"] is not None and m["eta"] > 0 for m in progress)  # estimated mid-stage

    previews = [m for m in before if m["type"] == "preview"]
    assert [m["label"] for m in previews] == ["visual hull", "surface", "refined surface"]
    assert before.index(previews[0]) < [m.get("stage") for m in before].index("fit")  # before the fit starts
    assert before.index(previews[1]) < [m.get("stage") for m in before].index("geometry")
    assert before.index(previews[2]) < [m.get("stage") for m in before].index("refine")
    meshes = []
    for n, msg in enumerate(previews):
        assert msg["path"] == str(job_dir / protocol.PREVIEW_FOLDER / f"preview_{n:02d}.npz")
        with np.load(msg["path"], allow_pickle=False) as npz:
            meshes.append({key: npz[key] for key in npz.files})
    assert "vertex_colors" not in meshes[0] and meshes[1]["vertex_colors"].shape == (len(meshes[1]["positions"]), 4)

    files = result["files"]
    assert set(files) == {"npz", "glb", "ply"}
    assert all(Path(p).is_file() and Path(p).parent == job_dir / protocol.RESULT_FOLDER for p in files.values())
    on_disk = json.loads((job_dir / protocol.RESULT_FOLDER / "metrics.json").read_text())
    assert result["metrics"] == on_disk and result["metrics"]["faces"] > 0
    assert {"warnings", "timings"} <= set(result["metrics"])

    # The hull holds the object: the result lies inside the hull preview's box, in the same (world) frame.
    with np.load(files["npz"], allow_pickle=False) as npz:
        final = npz["positions"]
    hull = meshes[0]["positions"]
    assert np.all(final.min(0) > hull.min(0) - 0.02) and np.all(final.max(0) < hull.max(0) + 0.02)
    gap = np.abs(np.concatenate([final.min(0) - hull.min(0), final.max(0) - hull.max(0)]))
    print(f"hull box vs result box: largest gap {gap.max():.3f}, scene half-size {np.abs(final).max():.2f}")
    assert gap.max() < 0.15  # measured 0.101: two fit steps leave the surface close to the (loose) 5-view hull


def test_run_while_busy_then_cancel(server, tiny_scene, tmp_path):
    job_dir = write_job(tiny_scene.train, tmp_path / "job", LONG)
    server.send("run", job_id="long", job_dir=str(job_dir))
    server.until("progress", stage="fit")
    server.send("run", job_id="second", job_dir=str(job_dir))
    busy = server.recv()
    assert (busy["type"], busy["error_type"], busy["job_id"]) == ("error", "Busy", "second")
    assert "'long' is running" in busy["message"] and "cancel" in busy["fix"]

    server.send("cancel", job_id="elsewhere")  # not the running job: ignored
    start = time.perf_counter()
    server.send("cancel", job_id="long")
    before, end = server.until("result", "error", "cancelled")
    latency = time.perf_counter() - start
    print(f"\ncancel → cancelled: {latency:.3f} s")
    assert end == {"type": "cancelled", "job_id": "long"}
    assert latency < CANCEL_LATENCY_BOUND_S
    assert all(m["type"] == "progress" for m in before)
    assert not (job_dir / protocol.RESULT_FOLDER).exists()


def test_input_error_names_the_view(server, tiny_scene, tmp_path):
    job_dir = write_job(tiny_scene.train, tmp_path / "job", SHORT)
    (job_dir / "images" / "002.png").unlink()
    server.send("run", job_id="bad", job_dir=str(job_dir))
    error = server.recv()
    assert (error["type"], error["error_type"], error["job_id"]) == ("error", "InputError", "bad")
    assert error["view_index"] == 2 and error["view"] == "002" and "002.png" in error["message"]
    assert error["fix"] and error["traceback"] == ""


def test_gtr_checkpoint_stays_loaded_between_jobs(server, tiny_scene, tiny_gtr_checkpoint, tmp_path):
    options = {"method": "gtr", "checkpoint": str(tiny_gtr_checkpoint), "mesh_resolution": 16,
               "refine_iterations": 0, "device": "cpu"}  # fmt: skip
    job_dir = write_job(tiny_scene.train, tmp_path / "job", options)

    def checkpoint_messages(job_id: str) -> list[str]:
        server.send("run", job_id=job_id, job_dir=str(job_dir))
        before, end = server.until("result", "error", "cancelled")
        assert end["type"] == "result", end
        assert [m["label"] for m in before if m["type"] == "preview"] == ["visual hull", "surface"]
        return [m["message"] for m in before if m.get("stage") == "checkpoint"]

    assert checkpoint_messages("g1") == ["reading the GTR weights"]
    assert checkpoint_messages("g2") == ["cached in memory: tiny.safetensors"]
    stat = tiny_gtr_checkpoint.stat()
    os.utime(tiny_gtr_checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "a newer file"
    assert checkpoint_messages("g3") == ["reading the GTR weights"]


def test_closed_stdin_cancels_the_job_and_exits(fresh_backend, tiny_scene, tmp_path):
    job_dir = write_job(tiny_scene.train, tmp_path / "job", LONG)
    fresh_backend.handshake()
    fresh_backend.send("run", job_id="orphan", job_dir=str(job_dir))
    fresh_backend.until("preview")  # the visual hull: the fit starts now
    fresh_backend.process.stdin.close()  # what happens when the add-on dies
    start = time.perf_counter()
    assert fresh_backend.wait() == 0
    print(f"\nstdin closed → exit: {time.perf_counter() - start:.2f} s")
    assert not (job_dir / protocol.RESULT_FOLDER).exists()


# ---------------------------------------------------------------------------------------- pacing and previews


class Clock:
    """A settable clock for :class:`ProgressPacer`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_throttles_per_stage_but_keeps_first_and_last():
    clock = Clock()
    pacer = ProgressPacer(interval=0.1, clock=clock)
    sent = []
    for step in range(101):  # 100 steps 10 ms apart: 1 s of a stage
        if pacer.update("fit", step, 100).send:
            sent.append(step)
        clock.now += 0.01
    assert sent[0] == 0 and sent[-1] == 100 and 10 <= len(sent) <= 12  # ~10 per second
    assert pacer.update("bake", 0, 4).send  # another stage starts: sent at once


def test_pacer_eta_from_the_stage_rate():
    clock = Clock()
    pacer = ProgressPacer(clock=clock)
    assert pacer.update("fit", 10, 110).eta is None  # nothing to estimate from yet
    clock.now += 2.0
    assert pacer.update("fit", 30, 110).eta == pytest.approx(8.0)  # 20 steps in 2 s, 80 to go
    clock.now += 1.0
    assert pacer.update("fit", 35, 110).eta == pytest.approx(75 * 3.0 / 25)
    assert pacer.update("fit", 110, 110).eta == 0.0
    clock.now += 1.0
    pace = pacer.update("fit", 5, 110)  # the step went back: a new run of the stage
    assert pace.send and pace.eta is None


def test_hull_preview_mesh_is_the_grid_surface_and_cheap(one_torch_thread):
    D = 128
    centres = OccupancyGrid(torch.zeros((D,) * 3, dtype=torch.bool)).cell_centres()
    sphere = OccupancyGrid((centres - torch.tensor([0.2, 0.0, -0.1])).norm(dim=-1) < 0.6)
    hull_mesh(sphere)  # the first call in a process costs ~0.2 s more (tables, allocations; extraction pays it too)
    start = time.perf_counter()
    mesh = hull_mesh(sphere)
    seconds = time.perf_counter() - start
    radius = (mesh.vertices - torch.tensor([0.2, 0.0, -0.1])).norm(dim=-1)
    print(
        f"\nhull preview of a {D}³ grid: {seconds:.3f} s, {mesh.num_faces} faces, radius error mean "
        f"{float(radius.mean()) - 0.6:.4f}, max {float((radius - 0.6).abs().max()) * D / 2:.2f} cells"
    )
    assert abs(float(radius.mean()) - 0.6) < 0.002  # measured 0.0002
    assert float((radius - 0.6).abs().max()) < 1.0 * 2 / D  # one cell of the 128³ grid; measured 0.45
    assert seconds < 0.2  # measured 0.010 s (one torch thread)
    edge = OccupancyGrid(torch.ones((8,) * 3, dtype=torch.bool))  # touching the box: closed at the box
    box = hull_mesh(edge).vertices
    assert torch.allclose(box.min(0).values, torch.full((3,), -1.0)) and torch.allclose(
        box.max(0).values, torch.ones(3)
    )
