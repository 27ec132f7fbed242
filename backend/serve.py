"""``python -m backend serve``: the backend the Blender add-on talks to, JSON lines over stdin/stdout.

The messages and their fields are :mod:`backend.protocol`'s. This module is the process around them:

- at start-up the real stdout is kept for protocol lines only, and ``sys.stdout`` and file descriptor 1 point at
  stderr, so a stray ``print`` (or a native library writing to fd 1) lands in the log, not in the stream;
- the main thread reads stdin and answers at once; a job runs in a worker thread, one job at a time, so a
  ``cancel`` is read while the job runs (the job stops at its next cancel point);
- a GTR checkpoint stays in memory between jobs (:class:`CheckpointCache`);
- torch and the pipeline are imported before ``ready`` is sent, so the first job starts without that wait; the
  rest of the warm-up (:func:`warm_up`) runs in a thread after it.

Exit status: 0 after ``shutdown`` or when stdin closes (the add-on is gone), a running job cancelled first;
:data:`EXIT_PROTOCOL_MISMATCH` when the add-on speaks another protocol version (after an ``error`` saying what to
do).
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import protocol
from .errors import Cancelled, InputError
from .progress import Hooks, ProgressPacer

if TYPE_CHECKING:
    from .gtr.checkpoint import Weights
    from .mesh import Mesh

EXIT_PROTOCOL_MISMATCH = 3
"""Exit status after refusing an add-on that speaks another protocol version."""
DEFAULT_FORMATS = ("npz", "glb")
"""Files a ``run`` writes when it names no ``formats``."""
STOP_WAIT_S = 10.0
"""How long ``shutdown`` (or the end of stdin) waits for a cancelled job to stop before the process exits anyway."""
MEMORY_FIX = (
    "free memory (close other programs, or release other backends), or ask for less: preset draft, a smaller "
    "mesh_resolution or texture_size, fewer or smaller images; on a GPU, device cpu uses system memory instead."
)


def log(text: str) -> None:
    print(f"serve: {text}", file=sys.stderr, flush=True)


class Channel:
    """The protocol's output: one checked message per line, written whole (under a lock) and flushed. Once the
    stream is gone (the add-on closed its end), messages are dropped."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()
        self.closed = False

    def send(self, msg: dict) -> None:
        line = protocol.encode(msg)
        with self._lock:
            if self.closed:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):  # broken pipe, or a closed stream
                self.closed = True


def claim_stdout() -> TextIO:
    """The process's real stdout, kept for protocol lines; ``sys.stdout`` and fd 1 then point at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", encoding="utf-8", newline="\n")


def warm_up() -> None:
    """What the first job would otherwise wait for: the first optimiser built in a process imports torch._dynamo
    (about 1.4 s on a 2-core CPU), which also delayed a cancel arriving in the first fit step. Run in a thread
    after ``ready``, so neither the handshake nor the first preview waits for it."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def backend_facts() -> dict:
    """The ``ready`` message's fields. Imports torch and the pipeline (the slow part of start-up)."""
    import torch

    from . import __version__
    from .pipeline import reconstruct  # noqa: F401  (imported now, so the first job does not wait for it)
    from .raster import nvdiffrast_available

    cuda = torch.cuda.is_available()
    device = "cpu"
    if cuda:
        index = torch.cuda.current_device()
        device = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return dict(
        protocol=protocol.PROTOCOL_VERSION,
        backend_version=__version__,
        device=device,
        torch=torch.__version__,
        cuda=cuda,
        nvdiffrast=nvdiffrast_available("cuda") if cuda else False,
    )


# ---------------------------------------------------------------------------------------------------- checkpoint


@dataclass
class _CachedWeights:
    requested: Path
    trust: bool
    stamp: tuple[int, int] | None
    weights: Weights


def _stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, or None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class CheckpointCache:
    """The last GTR checkpoint read, kept in memory for the next job; a :data:`backend.pipeline.WeightsLoader`.

    One entry (a checkpoint is large). It is reused when the same path (resolved) is asked for with the same
    ``trust`` and the file that was read still has the same modification time and size; otherwise the file is
    read again, after the old weights were let go. ``reads`` counts the files read.
    """

    def __init__(self) -> None:
        self._entry: _CachedWeights | None = None
        self.reads = 0

    def __call__(self, path: str, trust: bool, hooks: Hooks) -> Weights:
        from .pipeline import read_weights

        requested = Path(path).expanduser().resolve()
        entry = self._entry
        if entry is not None and (entry.requested, entry.trust) == (requested, trust):
            if entry.stamp is not None and _stamp(Path(entry.weights.source)) == entry.stamp:
                hooks.report("checkpoint", 1, 1, f"cached in memory: {Path(entry.weights.source).name}")
                return entry.weights
        self._entry = None
        weights = read_weights(path, trust, hooks)
        self.reads += 1
        self._entry = _CachedWeights(requested, trust, _stamp(Path(weights.source)), weights)
        return weights


# ---------------------------------------------------------------------------------------------------------- jobs


class PreviewWriter:
    """A job's ``hooks.preview``: each mesh goes to ``<job_dir>/previews/preview_NN.npz`` (written atomically, NN
    from 00) and a ``preview`` message names it."""

    def __init__(self, channel: Channel, job_id: str, folder: Path):
        self.channel = channel
        self.job_id = job_id
        self.folder = folder
        self.count = 0

    def __call__(self, mesh: Mesh, label: str) -> None:
        from .export import ExportConfig, export_mesh

        stem = f"preview_{self.count:02d}"
        path = export_mesh(mesh, self.folder, ExportConfig(formats=("npz",), stem=stem))["npz"]
        self.count += 1
        self.channel.send(protocol.message("preview", job_id=self.job_id, path=str(path), label=label))


@dataclass
class RunningJob:
    job_id: str
    hooks: Hooks
    thread: threading.Thread


def json_safe(value):
    """``value`` with non-finite floats replaced by None (JSON has no NaN), recursively through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in str(err)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _text(msg: dict, key: str) -> str:
    value = msg[key]
    if not isinstance(value, str) or not value:
        raise protocol.ProtocolError(f"{msg['type']}.{key} must be a non-empty string, got {value!r}")
    return value


def _formats(msg: dict) -> tuple[str, ...]:
    from .export import FORMATS

    value = msg.get("formats")
    if value is None:
        return DEFAULT_FORMATS
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise protocol.ProtocolError(f"run.formats must be a list of strings, got {value!r}")
    unknown = [f for f in value if f not in FORMATS]
    if unknown or not value:
        what = f"unknown output format(s) {unknown}" if unknown else "no output format"
        raise InputError(f"{what} in run.formats.", fix=f"ask for a subset of {list(FORMATS)}, e.g. ['npz'].")
    return tuple(value)


class Server:
    """Answers messages from the add-on; runs one job at a time in a worker thread."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.checkpoints = CheckpointCache()
        self._ready: dict | None = None
        self._job: RunningJob | None = None
        self._lock = threading.Lock()

    def serve(self, lines: Iterable[bytes]) -> int:
        """Handle every line until ``shutdown`` (0), a protocol mismatch (non-zero) or the end of ``lines`` (0)."""
        for raw in lines:
            if not raw.strip():
                continue
            try:
                code = self.handle(protocol.decode(raw.decode("utf-8")))
            except protocol.ProtocolError as err:
                self._refuse(raw, str(err), "ProtocolError", fix="send one JSON message per line, as protocol.py says.")
            except UnicodeDecodeError as err:
                self._refuse(raw, f"a line that is not UTF-8 text ({err})", "ProtocolError")
            except InputError as err:
                self._refuse(raw, err.message, "InputError", fix=err.fix)
            except Exception as err:  # a fault of this side (e.g. torch fails to import): say so, keep serving
                self._refuse(raw, str(err) or type(err).__name__, type(err).__name__, trace=traceback.format_exc())
            else:
                if code is not None:
                    return code
        log("stdin closed")
        return 0

    def _refuse(self, raw: bytes, text: str, error_type: str, fix: str = "", trace: str = "") -> None:
        """An ``error`` about a line; it carries the line's ``job_id`` when the line has a readable one."""
        try:
            job_id = json.loads(raw).get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        job_id = job_id if isinstance(job_id, str) else None
        self.channel.send(protocol.error(text, error_type=error_type, job_id=job_id, fix=fix, traceback=trace))

    def handle(self, msg: dict) -> int | None:
        """Act on one checked message; an exit status ends the conversation."""
        kind = msg["type"]
        if kind not in protocol.TO_BACKEND:
            raise protocol.ProtocolError(
                f"{kind!r} is a message the backend sends, not one it takes; send {', '.join(protocol.TO_BACKEND)}"
            )
        if kind == "hello":
            return self.on_hello(msg)
        if self._ready is None:
            raise protocol.ProtocolError(f"got {kind!r} before the handshake: send hello first")
        if kind == "run":
            self.on_run(msg)
        elif kind == "cancel":
            self.on_cancel(msg)
        elif kind == "shutdown":
            log("shutdown")
            return 0
        return None

    def on_hello(self, msg: dict) -> int | None:
        problem = protocol.version_mismatch(msg["protocol"], "add-on")
        if problem:
            log(problem)
            self.channel.send(protocol.error(problem, error_type="ProtocolMismatch"))
            return EXIT_PROTOCOL_MISMATCH
        first = self._ready is None
        if first:
            self._ready = backend_facts()
            log(f"ready: {self._ready}")
        self.channel.send(protocol.message("ready", **self._ready))
        if first:
            # not a daemon: the interpreter waits for it at exit (ending inside an import aborts the process)
            threading.Thread(target=warm_up, name="warm-up").start()
        return None

    def on_run(self, msg: dict) -> None:
        job_id = _text(msg, "job_id")
        job_dir = Path(_text(msg, "job_dir")).expanduser().resolve()
        formats = _formats(msg)
        with self._lock:
            if self._job is not None:
                running = self._job.job_id
                self.channel.send(protocol.error(
                    f"job {running!r} is running and the backend runs one job at a time.",
                    error_type="Busy",
                    job_id=job_id,
                    fix=f"cancel job {running!r} or wait for its result, then send this run again.",
                ))  # fmt: skip
                return
            hooks = self._hooks_for(job_id, job_dir)
            thread = threading.Thread(
                target=self._work, args=(job_id, job_dir, formats, hooks), name=f"job {job_id}", daemon=True
            )
            self._job = RunningJob(job_id, hooks, thread)
            thread.start()
        log(f"job {job_id!r} started: {job_dir}")

    def _hooks_for(self, job_id: str, job_dir: Path) -> Hooks:
        """A job's hooks: progress sent paced and with ETAs (:class:`ProgressPacer`), previews written and sent."""
        pacer = ProgressPacer()

        def progress(stage: str, step: int, total: int, message: str) -> None:
            pace = pacer.update(stage, step, total)
            if pace.send:
                eta = None if pace.eta is None else round(pace.eta, 1)
                self.channel.send(protocol.message(
                    "progress", job_id=job_id, stage=stage, step=step, total=total, message=message, eta=eta
                ))  # fmt: skip

        return Hooks(progress=progress, preview=PreviewWriter(self.channel, job_id, job_dir / protocol.PREVIEW_FOLDER))

    def on_cancel(self, msg: dict) -> None:
        job_id = _text(msg, "job_id")
        with self._lock:
            job = self._job
        if job is None or job.job_id != job_id:  # it ended already and said so (result, error or cancelled)
            log(f"cancel {job_id!r}: no such job is running; ignored")
            return
        job.hooks.cancel()

    def stop(self) -> bool:
        """Cancel the running job, if any, and wait for it (up to :data:`STOP_WAIT_S`); True when none is left."""
        with self._lock:
            job = self._job
        if job is None:
            return True
        job.hooks.cancel()
        job.thread.join(STOP_WAIT_S)
        return not job.thread.is_alive()

    def _work(self, job_id: str, job_dir: Path, formats: tuple[str, ...], hooks: Hooks) -> None:
        """The worker thread: run the job, then (once the server is free again) send how it ended."""
        try:
            final = self._reconstruct(job_id, job_dir, formats, hooks)
        except Cancelled:
            final = protocol.message("cancelled", job_id=job_id)
        except InputError as err:
            final = protocol.error(err.message, error_type="InputError", job_id=job_id, view=err.view,
                                   view_index=err.index, fix=err.fix)  # fmt: skip
        except Exception as err:
            final = protocol.error(
                str(err) or type(err).__name__,
                error_type=type(err).__name__,
                job_id=job_id,
                traceback=traceback.format_exc(),
                fix=MEMORY_FIX if _is_out_of_memory(err) else "",
            )
        _release_memory()
        with self._lock:
            self._job = None
        log(f"job {job_id!r}: {final['type']}")
        self.channel.send(final)

    def _reconstruct(self, job_id: str, job_dir: Path, formats: tuple[str, ...], hooks: Hooks) -> dict:
        from .inputs import load_job
        from .pipeline import config_from_options, reconstruct, resolve_device, write_outputs

        job = load_job(job_dir / "job.json")
        config = config_from_options(job.options)
        config = replace(config, export=replace(config.export, formats=formats))
        device = resolve_device(job.options.get("device", "auto"))
        result = reconstruct(job, config, device, hooks, load_weights=self.checkpoints)
        out_dir = job_dir / protocol.RESULT_FOLDER
        written = write_outputs(result, out_dir, config, hooks=hooks)
        metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))  # as written: plain JSON
        files = {kind: str(out_dir / name) for kind, name in written["files"].items()}
        return protocol.message("result", job_id=job_id, files=files, metrics=json_safe(metrics))


def main() -> int:
    """Run the server on this process's stdin/stdout until shutdown or the end of stdin."""
    server = Server(Channel(claim_stdout()))
    try:
        code = server.serve(sys.stdin.buffer)
    except KeyboardInterrupt:
        code = 0
    if not server.stop():
        log(f"the running job did not stop within {STOP_WAIT_S:g} s; exiting anyway")
        sys.stderr.flush()
        os._exit(code)
    return code
