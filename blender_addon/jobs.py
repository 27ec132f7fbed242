"""The job in flight and the backend it runs on, applied to the scene by :func:`drain` on the main thread.

One backend process serves the session (started on the first Reconstruct, kept so a loaded checkpoint stays
loaded, freed by "Release backend" and on unregister) and runs one job at a time. The flow of a job:

    start()  → writes nothing itself (the job folder is ready), starts the backend if needed, sends ``run``
    drain()  → applies the backend's messages: progress → the panel; preview → one object updated in place;
               result → that object becomes the final object (one undo step); error / cancelled → no object left.
               A mesh file is read and checked in a worker thread first; drain() builds at most one
               mesh per call, so no call holds Blender's main thread for long
    cancel() → asks the backend to stop; :func:`drain` kills it if it has not answered within ``CANCEL_GRACE_S``

In the app :func:`drain` runs as a ``bpy.app.timers`` callback; in background mode (batch scripts, tests) timers
never fire, so :func:`run_until_done` calls it in a loop. No bpy call happens off the main thread.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import importer, protocol
from .backend_client import BackendError, BackendProcess

DRAIN_INTERVAL_S = 0.1
"""How often the timer applies the backend's messages while a job runs."""
CANCEL_GRACE_S = 3.0
"""A cancel not answered within this time kills the backend (a stage between cancel points, or a hung process)."""
MESSAGES_PER_DRAIN = 50
"""At most this many messages are applied per call, so one call stays short however fast the backend talks."""


@dataclass
class Outcome:
    """How a job ended. ``state``: ``done``, ``error`` or ``cancelled``."""

    state: str
    message: str
    object_name: str | None = None
    files: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@dataclass
class PendingMesh:
    """A preview or the result whose file is being read in the worker thread."""

    arrays: Future
    final: bool
    message: dict


@dataclass
class Job:
    job_id: str
    job_dir: Path
    scene_name: str
    object_name: str
    """Name for the object the result becomes."""
    formats: tuple[str, ...] = ("npz", "glb")
    on_finish: Callable[[Outcome], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    sent: bool = False
    preview_object: str | None = None
    cancel_requested: float | None = None
    first_preview_s: float | None = None
    """Seconds from start() to the first preview object in the scene."""
    pending: list[PendingMesh] = field(default_factory=list)
    outcome: Outcome | None = None


class Session:
    """The module's state: the backend process, the job in flight, and how long drain() calls took (wall time, and
    the main thread's own CPU time, which other processes competing for the cores cannot inflate)."""

    def __init__(self):
        self.backend: BackendProcess | None = None
        self.job: Job | None = None
        self.longest_drain_s = 0.0
        self.longest_drain_cpu_s = 0.0
        self._reader: ThreadPoolExecutor | None = None

    def read_mesh(self, path: Path) -> Future:
        """Read and check a mesh file in the worker thread (no bpy there)."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gtr-mesh-reader")
        return self._reader.submit(importer.read_mesh_npz, path)

    def stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None


session = Session()


# ------------------------------------------------------------------------------------------------------ control


def busy() -> bool:
    return session.job is not None


def start(job: Job, python: str) -> None:
    """Send ``job`` to the backend (started here when needed). Raises :class:`BackendError` when it cannot start."""
    if busy():
        raise BackendError("a reconstruction is already running: cancel it or wait for it to finish.")
    backend = session.backend
    if backend is None or not backend.alive:
        session.backend = backend = BackendProcess(python).start()
    session.job = job
    if backend.ready is None:  # drain() sends the run once the backend answered the handshake
        _status(job, "STARTING", stage="starting the backend")
        return
    try:
        _send_run(job)
    except BackendError:
        session.job = None
        raise


def cancel() -> None:
    job = session.job
    if job is None or job.cancel_requested is not None:
        return
    job.cancel_requested = time.perf_counter()
    _status(job, "CANCELLING", stage="cancelling")
    _send_cancel(job)


def _send_cancel(job: Job) -> None:
    if job.sent and session.backend is not None and session.backend.alive:
        try:
            session.backend.send(protocol.message("cancel", job_id=job.job_id))
        except BackendError:
            pass  # it died: drain() reports that


@bpy.app.handlers.persistent
def on_load_pre(*_args) -> None:
    """Opening another file ends the running job (its scene goes away): cancelled, its preview object removed."""
    job = session.job
    if job is None:
        return
    _send_cancel(job)
    _finish(job, Outcome("cancelled", "cancelled: another file was opened"))


def release_backend() -> None:
    """Stop the backend process (frees its memory); a running job is cancelled first."""
    if session.job is not None:
        _finish(session.job, Outcome("cancelled", "cancelled: the backend was released"))
    if session.backend is not None:
        session.backend.stop()
        session.backend = None


def shutdown() -> None:
    """Unregister: stop the timer, drop the job (and its preview object), stop the backend."""
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)
    release_backend()
    session.stop_reader()


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


# -------------------------------------------------------------------------------------------------------- drain


def drain() -> float | None:
    """Apply what the backend said since the last call (main thread only). Returns the delay until the next call,
    or None when no job is left (the timer protocol)."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    job = session.job
    try:
        if job is None:
            return None
        backend = session.backend
        for msg in backend.messages(MESSAGES_PER_DRAIN) if backend else ():
            _apply(job, msg)
            if session.job is not job:
                return None
        _build_next(job)
        if session.job is not job:
            return None
        result_on_its_way = any(pending.final for pending in job.pending)
        if (backend is None or backend.gone) and not result_on_its_way:
            text = backend.exit_message() if backend else "the backend is not running."
            log = backend.stderr_tail() if backend else ""
            session.backend = None
            _finish(job, Outcome("error", f"{text}\n{log}".strip()))
            return None
        if job.cancel_requested is not None and time.perf_counter() - job.cancel_requested > CANCEL_GRACE_S:
            backend.kill()
            session.backend = None
            _finish(job, Outcome("cancelled", "cancelled (the backend did not answer in time and was stopped)"))
            return None
        return DRAIN_INTERVAL_S
    except Exception as err:  # a bug here must not leave a job hanging with its timer gone: end it, say why
        traceback.print_exc()
        _finish(job, Outcome("error", f"the add-on failed while applying the backend's messages: {err!r}"))
        return None
    finally:
        session.longest_drain_s = max(session.longest_drain_s, time.perf_counter() - began)
        session.longest_drain_cpu_s = max(session.longest_drain_cpu_s, time.thread_time() - began_cpu)


def run_until_done(poll_s: float = 0.02, timeout: float | None = None) -> Outcome | None:
    """Call :func:`drain` until the job ends (background mode and tests, where timers never fire)."""
    job = session.job
    deadline = None if timeout is None else time.monotonic() + timeout
    while session.job is not None:
        drain()
        if session.job is None:
            break
        if deadline is not None and time.monotonic() > deadline:
            cancel()
            deadline = None
        time.sleep(poll_s)
    return None if job is None else job.outcome


def _apply(job: Job, msg: dict) -> None:
    kind = msg["type"]
    if kind == "ready":
        try:
            session.backend.accept(msg)
        except BackendError as err:
            _finish(job, Outcome("error", str(err)))
            release_backend()
            return
        if job.cancel_requested is not None:
            _finish(job, Outcome("cancelled", "cancelled"))
            return
        try:
            _send_run(job)
        except BackendError as err:
            _finish(job, Outcome("error", str(err)))
        return
    if msg.get("job_id") not in (job.job_id, None):
        return  # a late message of an earlier job
    if kind == "progress":
        _progress(job, msg)
    elif kind == "preview":
        job.pending.append(PendingMesh(session.read_mesh(Path(msg["path"])), False, msg))
    elif kind == "result":
        job.pending.append(PendingMesh(session.read_mesh(Path(msg["files"]["npz"])), True, msg))
    elif kind == "cancelled":
        _finish(job, Outcome("cancelled", "cancelled"))
    elif kind == "error":
        _finish(job, _error_outcome(job, msg))


def _error_outcome(job: Job, msg: dict) -> Outcome:
    row = msg.get("view_index")  # job.json's views are the view list's rows, in order
    where = f"view {row + 1}: " if isinstance(row, int) else ""
    text = f"{msg['error_type']}: {where}{msg['message']}"
    if msg.get("fix"):
        text += f" Fix: {msg['fix']}"
    if msg.get("traceback"):
        text += "\n" + msg["traceback"].strip().splitlines()[-1]
    return Outcome("error", text)


def _send_run(job: Job) -> None:
    session.backend.send(
        protocol.message("run", job_id=job.job_id, job_dir=str(job.job_dir), formats=list(job.formats))
    )
    job.sent = True
    _status(job, "RUNNING", stage="queued")


def _progress(job: Job, msg: dict) -> None:
    settings = _settings(job)
    if settings is None:
        return
    total = msg["total"] or 0
    settings.stage = msg["stage"] + (f": {msg['message']}" if msg.get("message") else "")
    settings.progress = min(max(msg["step"] / total, 0.0), 1.0) if total > 0 else 0.0
    settings.eta = -1.0 if msg.get("eta") is None else float(msg["eta"])
    _redraw()


def _build_next(job: Job) -> None:
    """Build the oldest mesh whose file has been read (a preview already followed by a newer mesh is skipped)."""
    while job.pending and job.pending[0].arrays.done():
        pending = job.pending.pop(0)
        if not pending.final and job.pending:
            continue  # stale: a newer preview or the result is on its way
        obj = _show(job, pending)
        if pending.final and obj is not None:
            msg = pending.message
            metrics = msg["metrics"]
            text = f"done in {time.perf_counter() - job.started:.1f} s: {metrics.get('faces', 0):,} faces"
            if metrics.get("warnings"):
                text += f"; {len(metrics['warnings'])} warning(s): " + " | ".join(metrics["warnings"])
            _finish(job, Outcome("done", text, obj.name, msg["files"], metrics))
        return


def _show(job: Job, pending: PendingMesh):
    """Build or update the job's one object from a read mesh file; the final one gets the job's object name."""
    scene = bpy.data.scenes.get(job.scene_name)
    if scene is None:
        _finish(job, Outcome("error", "the scene the job was started from is gone."))
        return None
    current = bpy.data.objects.get(job.preview_object) if job.preview_object else None
    name = job.object_name if pending.final else f"{job.object_name} (preview)"
    try:
        arrays = pending.arrays.result()
        obj = importer.update_object(current, name, scene.collection, arrays)
    except (OSError, ValueError, RuntimeError) as err:  # MeshFileError is a ValueError
        if pending.final:
            _finish(job, Outcome("error", f"could not build the result: {err}"))
        return None
    if pending.final and obj.name != name:
        obj.name = name  # the preview object becomes the result
    job.preview_object = obj.name
    if job.first_preview_s is None:
        job.first_preview_s = time.perf_counter() - job.started
    _redraw()
    return obj


def _finish(job: Job, outcome: Outcome) -> None:
    """End the job: keep the object only when it is the result; report; undo step; callback."""
    if session.job is not job:
        return
    session.job = None
    if outcome.state != "done" and job.preview_object:
        obj = bpy.data.objects.get(job.preview_object)
        if obj is not None:
            importer.remove_object(obj)
    job.outcome = outcome
    settings = _settings(job)
    if settings is not None:
        settings.state = "IDLE"
        settings.stage = ""
        settings.progress = 1.0 if outcome.state == "done" else 0.0
        settings.eta = -1.0
        settings.status = outcome.message
        settings.status_is_error = outcome.state == "error"
    if outcome.state == "done" and not bpy.app.background:
        try:
            bpy.ops.ed.undo_push(message="GTR Reconstruct")
        except RuntimeError:
            pass
    _redraw()
    if job.on_finish is not None:
        job.on_finish(outcome)


def _status(job: Job, state: str, stage: str) -> None:
    settings = _settings(job)
    if settings is not None:
        settings.state = state
        settings.stage = stage
        settings.progress = 0.0
        settings.eta = -1.0
        settings.status = ""
        settings.status_is_error = False
        _redraw()


def _settings(job: Job):
    scene = bpy.data.scenes.get(job.scene_name)
    return None if scene is None else scene.gtr


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def ensure_timer() -> None:
    """In the app, apply messages every ``DRAIN_INTERVAL_S`` while a job runs (the timer ends itself)."""
    if not bpy.app.background and not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=DRAIN_INTERVAL_S, persistent=True)
