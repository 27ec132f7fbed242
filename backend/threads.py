"""How the backend uses the CPU: how long OpenMP threads spin, and how many torch uses.

torch runs its CPU kernels on an OpenMP pool (GNU libgomp in torch's Linux wheels). A pool thread that reaches a
barrier first spins before it sleeps: by default for 300,000 iterations, a good fraction of a millisecond. When
other processes compete for the cores (Blender itself, a second job, any CPU-bound program) the spinning thread
takes the core from the very thread it waits for, and each of the thousands of small parallel regions of a fit
step pays for it; a thread that sleeps too soon makes every region pay for waking it instead.

Measured on a 2-core machine (CPU-2B of docs/BENCHMARKS.md; 150 fit steps + 20 geometry iterations on the duck
renders, seconds), alone / beside one busy loop: 2 threads with ``GOMP_SPINCOUNT`` 1,000: 75.5 + 14.6 / 90.5 +
18.9; 10,000: 63.4 + 11.9 / 123.2 + 38.4; 100,000: 61.0 + 11.7 / 317.5 + 123.4; libgomp's 300,000: 61.7 + 11.7 /
127.6 + 31.2; **1 thread**: 67.8 + 12.4 / 71.9 + 15.5. No spin count is right both alone and shared, but one
thread fewer per busy core is. So:

- ``GOMP_SPINCOUNT=10000``, set when this package is imported, before anything imports torch (libgomp reads it
  once, when torch loads it); a user's own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is kept;
- the thread count starts at the CPUs this process may use (its affinity mask and a cgroup CPU quota) and, while
  a reconstruction runs, follows them less the cores other processes keep busy (:class:`ThreadPacer`, looked at
  every second from the pipeline's cancel points); a job's option ``threads`` fixes it instead.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

SPIN_COUNT = "10000"


def set_spin_count() -> None:
    """Make OpenMP threads spin only briefly before they sleep (``GOMP_SPINCOUNT``), unless the user chose their own
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``, or torch is loaded already (OpenMP has read its settings then)."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole CPUs allowed by a cgroup v2 quota (``cpu.max``: ``quota period``, rounded up), None when unlimited."""
    try:
        with open(path, encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def affinity() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the platform has no such mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """How many CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    count = len(affinity())
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def use_threads(count: int | None = None) -> int:
    """Set torch's CPU thread count to ``count`` (None: :func:`available_cpus`) and return it."""
    import torch

    count = count or available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def _busy_ticks(cpus: set[int], path: str = "/proc/stat") -> int | None:
    """Clock ticks the ``cpus`` spent busy since boot (user, nice, system, irq, softirq: not idle, iowait or the
    hypervisor's steal), all processes together; None where /proc/stat cannot be read."""
    total = 0
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in values[:7])
                    total += user + nice + system + irq + softirq
    except (OSError, ValueError):
        return None
    return total


def _own_ticks(path: str = "/proc/self/stat") -> int | None:
    """Clock ticks this process has run (all its threads, user + system); None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


class ThreadPacer:
    """Keeps torch's thread count at the CPUs this process may use less the cores other processes keep busy.

    :meth:`__call__` is cheap to call often (it looks at most every ``interval`` seconds) and must run on the thread
    that runs torch's kernels (OpenMP's thread count belongs to the calling thread). It does nothing where /proc
    is missing (macOS, Windows)."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 busy: Callable[[set[int]], int | None] = _busy_ticks,
                 own: Callable[[], int | None] = _own_ticks):  # fmt: skip
        self.interval, self.clock, self.busy, self.own = interval, clock, busy, own
        self.cpus = affinity()
        self.available = available_cpus()
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[float, int, int] | None:
        busy, own = self.busy(self.cpus), self.own()
        return None if busy is None or own is None else (self.clock(), busy, own)

    def others(self) -> float | None:
        """Cores other processes kept busy since the last look (None: unknown, or too soon to tell)."""
        if self._last is None or self.clock() - self._last[0] < self.interval:
            return None
        now = self._sample()
        if now is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / self.ticks_per_second / (t1 - t0))

    def threads_for(self, others: float) -> int:
        """The thread count beside ``others`` busy cores: one fewer per busy core (rounded: 0.6 counts as one)."""
        return max(1, min(self.available, math.floor(self.available - others + 0.5)))

    def __call__(self) -> None:
        others = self.others()
        if others is not None:
            use_threads(self.threads_for(others))
