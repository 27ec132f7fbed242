"""Progress reporting, previews and cancellation for long-running stages.

Every long loop calls ``hooks.report(stage, step, total)``; that both forwards progress and raises
:class:`~backend.errors.Cancelled` when the caller asked to stop. Stages that have an early mesh to show hand it
to ``hooks.preview`` (see :mod:`backend.preview`). :class:`ProgressPacer` thins a stream of reports for a
listener in another process and estimates each stage's time left.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .errors import Cancelled

if TYPE_CHECKING:
    from .mesh import Mesh

ProgressFn = Callable[[str, int, int, str], None]
"""(stage, step, total, message) → None."""
PreviewFn = Callable[["Mesh", str], None]
"""(mesh in the job's world frame, label) → None: a mesh worth showing now, before the result."""

STAGES: dict[str, str] = {
    "scene": "the demo renders its procedural object",
    "checkpoint": "reading the GTR weights",
    "segment": "views without masks: segmentation per view, then the derived masks per view",
    "normalise": "the gtr method's canonical frame (its visual hull reports as hull)",
    "hull": "visual-hull carving, per view",
    "fit": "the field fit (and the gtr method's polish), every 10 steps",
    "generate": "the GTR generator, per transformer block",
    "extract": "depth maps per view, density grid per chunk, marching cubes, clean-up",
    "geometry": "geometry refinement (vertices moved to match the views' masks and colours), every 10 steps",
    "refine": "surface samples per view, then texture-refinement iterations",
    "bake": "colours per chunk (UV unwrap and atlas rasterisation before them)",
    "metrics": "training PSNR, per view",
    "evaluate": "held-out mesh renders and volume renders, per view; geometry scores",
    "write": "the last cancel point before output files are written",
}
"""Every stage name passed to :meth:`Hooks.report`, with what reports under it (one place; docs list the same)."""


def cut_short_warning(work: str, done: int, planned: int, option: str, seconds: float) -> str:
    """The result's warning when a time limit stopped ``work`` after ``done`` of ``planned`` steps."""
    return (
        f"the {work} stopped at its time limit ({option} {seconds:g}) after {done} of {planned} steps "
        f"({100 * done / max(planned, 1):.0f} %); the result is below what the preset gives. Remove or raise "
        f"{option} for the full amount of work."
    )


class StageTimer:
    """Wall seconds per stage: :meth:`lap` records the time since the previous lap under a stage name,
    :meth:`finish` adds ``total`` (since construction). ``timings`` maps names to seconds rounded to ms."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 3)
        self._last = now

    def finish(self) -> dict[str, float]:
        self.timings["total"] = round(time.perf_counter() - self._start, 3)
        return self.timings


def _no_progress(stage: str, step: int, total: int, message: str) -> None:
    return None


def _no_preview(mesh: Mesh, label: str) -> None:
    return None


@dataclass
class Hooks:
    """What a stage needs from its caller: where to report progress and previews, and whether to stop."""

    progress: ProgressFn = _no_progress
    cancel_event: threading.Event = field(default_factory=threading.Event)
    preview: PreviewFn = _no_preview
    """Called with a world-frame mesh and a label when a stage has an early result; the default ignores it."""
    pace: Callable[[], None] | None = None
    """Called at every cancel point, on the thread that does the work (the pipeline sizes torch's thread pool to
    the machine's load with it, :class:`backend.threads.ThreadPacer`)."""

    @property
    def wants_previews(self) -> bool:
        """Whether anyone listens for previews (stages build preview meshes only then)."""
        return self.preview is not _no_preview

    def report(self, stage: str, step: int, total: int, message: str = "") -> None:
        self.check_cancel()
        self.progress(stage, step, total, message)

    def check_cancel(self) -> None:
        if self.pace is not None:
            self.pace()
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the caller")

    def cancel(self) -> None:
        self.cancel_event.set()


class Pace(NamedTuple):
    """:meth:`ProgressPacer.update`'s verdict on one report."""

    send: bool
    """Whether to forward this report."""
    eta: float | None
    """Seconds left in the stage at its rate so far (0 at its last step); None until the stage has advanced."""


@dataclass
class _StageRun:
    start_time: float
    start_step: int
    total: int
    step: int
    sent_time: float


class ProgressPacer:
    """Thins a stream of progress reports and estimates each stage's time left.

    Per stage, a report is forwarded when it is the stage's first, when it is its last (``step >= total``), or
    when at least ``interval`` seconds passed since the stage's last forwarded report; so at most about
    1 / ``interval`` reports per second per stage reach the listener, and it always sees a stage start and end.

    ETA: a stage's *run* starts at its first report, and again whenever its ``total`` changes or its ``step``
    goes back (stages that loop over views several times). The estimate is
    ``(total − step) · elapsed / (step − start step)``, from the run's start; None until the run has advanced by
    a step, 0 at the last step.
    """

    def __init__(self, interval: float = 0.1, clock: Callable[[], float] = time.perf_counter):
        self.interval = interval
        self.clock = clock
        self._runs: dict[str, _StageRun] = {}

    def update(self, stage: str, step: int, total: int) -> Pace:
        now = self.clock()
        run = self._runs.get(stage)
        if run is None or total != run.total or step < run.step:
            self._runs[stage] = _StageRun(now, step, total, step, now)
            return Pace(True, 0.0 if step >= total else None)
        run.step = step
        last = step >= total
        eta = None
        if last:
            eta = 0.0
        elif step > run.start_step:
            eta = (total - step) * (now - run.start_time) / (step - run.start_step)
        send = last or now - run.sent_time >= self.interval
        if send:
            run.sent_time = now
        return Pace(send, eta)


class ConsoleProgress:
    """A single-line progress bar on stderr with the stage's time left, redrawn at most ~10 times a second."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self._stage = None
        self._pacer = ProgressPacer(interval=0.1)

    def __call__(self, stage: str, step: int, total: int, message: str = "") -> None:
        pace = self._pacer.update(stage, step, total)
        if stage == self._stage and not pace.send:
            return
        if stage != self._stage and self._stage is not None:
            self.stream.write("\n")
        self._stage = stage
        frac = min(max(step / total, 0.0), 1.0) if total > 0 else 0.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = "" if pace.eta is None else f"{pace.eta:5.0f}s left"
        self.stream.write(f"\r{stage:<10} [{bar}] {step}/{total} {eta:>10} {message[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self._stage is not None:
            self.stream.write("\n")
            self.stream.flush()
