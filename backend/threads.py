"""How the backend uses the CPU: OpenMP's wait policy and torch's thread count.

torch runs its CPU kernels on an OpenMP pool. By default a pool thread that reaches a barrier first spins,
burning its core while it waits for the others. When other processes compete for the cores (Blender itself, a
second job, any CPU-bound program) the spinning thread takes the core from the very thread it waits for, and every
one of the thousands of small parallel regions in a fit step pays a scheduler time slice. Measured on a 2-core
machine (30 demo fit steps, ``benchmarks/bench_cpu.py`` has the full table): 0.19 s a step alone; beside a
busy loop 0.45 s with spinning and 0.24 s with passive waits; two fits side by side 0.53 s each with spinning and
0.25 s each with passive waits. Alone the two policies are equally fast.

So the backend makes OpenMP wait passively (``OMP_WAIT_POLICY=PASSIVE``). OpenMP reads the variable once, when
torch loads it, so it is set when this package is imported, before anything imports torch; a value the user set
in the environment is kept. The thread count follows the CPUs this process may use (its affinity mask and a
cgroup CPU quota), not the machine's core count, and a job can override it (option ``threads``).
"""

from __future__ import annotations

import math
import os
import sys

WAIT_POLICY = "PASSIVE"


def set_wait_policy() -> bool:
    """Make OpenMP threads sleep instead of spinning while they wait, unless the environment says otherwise.

    Returns whether the policy is in force for this process: False when torch was imported before (OpenMP has
    read its settings then) or the user chose another ``OMP_WAIT_POLICY``."""
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == WAIT_POLICY
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return os.environ["OMP_WAIT_POLICY"].upper() == WAIT_POLICY


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
