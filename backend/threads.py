"""How the backend uses the CPU: how long OpenMP threads spin, and torch's thread count.

torch runs its CPU kernels on an OpenMP pool (GNU libgomp in torch's Linux wheels). A pool thread that reaches a
barrier first spins before it sleeps: by default for 300,000 iterations, a good fraction of a millisecond. When
other processes compete for the cores (Blender itself, a second job, any CPU-bound program) the spinning thread
takes the core from the very thread it waits for, and each of the thousands of small parallel regions of a fit
step pays for it. Measured on a 2-core machine, seconds per demo fit step (100 steps), alone / beside a busy
loop / two fits side by side: libgomp's default 0.16 / 0.47 / 0.71; no spinning at all (``OMP_WAIT_POLICY=PASSIVE``)
0.18–0.21 / 0.24 / 0.29; 1,000 spins 0.17 / 0.28 / 0.29.

So the backend sets ``GOMP_SPINCOUNT=1000``: as fast as the default alone, as robust as passive waiting when
shared. libgomp reads it once, when torch loads it, so it is set when this package is imported, before anything
imports torch. A user's own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is kept. The thread count follows the CPUs
this process may use (its affinity mask and a cgroup CPU quota), not the machine's core count, and a job can
override it (option ``threads``).
"""

from __future__ import annotations

import math
import os
import sys

SPIN_COUNT = "1000"


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


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def use_threads(count: int | None = None) -> int:
    """Set torch's CPU thread count to ``count`` (None: :func:`available_cpus`) and return it."""
    import torch

    count = count or available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
