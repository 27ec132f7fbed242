"""The CPU policy (backend/threads.py): a short OpenMP spin set before torch loads, threads from the affinity, one
thread fewer per core other processes keep busy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.threads import ThreadPacer, cgroup_cpu_limit

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import os, sys
import backend
import torch
from backend.threads import available_cpus, use_threads
print(os.environ.get("GOMP_SPINCOUNT"), available_cpus(), use_threads(), torch.get_num_threads())
"""


def probe(env_extra: dict | None = None, cpus: set[int] | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(env_extra or {})

    def pin():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=pin, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_short_spin_and_threads_from_the_affinity():
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    expected = min(cpus, limit) if limit else cpus
    assert probe() == ["10000", str(expected), str(expected), str(expected)]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a process to one")
def test_a_process_pinned_to_one_cpu_uses_one_thread():
    assert probe(cpus={min(os.sched_getaffinity(0))}) == ["10000", "1", "1", "1"]


@pytest.mark.parametrize(
    ("env", "spin"), [({"GOMP_SPINCOUNT": "300000"}, "300000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")]
)
def test_the_users_openmp_settings_are_kept(env, spin):
    assert probe(env)[0] == spin


def test_nothing_set_once_torch_is_loaded():
    """Imported after torch, the package leaves the environment alone: OpenMP has read it already."""
    code = "import os, torch, backend; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["None"], proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("200000 100000", 2), ("garbage", None)],
)
def test_cgroup_quota(tmp_path, text, expected):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cgroup_cpu_limit(str(path)) == expected


def test_no_cgroup_file(tmp_path):
    assert cgroup_cpu_limit(str(tmp_path / "missing")) is None


class FakeProc:
    """Scripted /proc readings: a clock, the CPUs' busy ticks and this process's ticks (100 per second)."""

    def __init__(self):
        self.now, self.busy_ticks, self.own_ticks = 0.0, 0, 0

    def advance(self, seconds: float, others: float, own: float) -> None:
        """Let ``seconds`` pass with ``others`` and ``own`` cores busy."""
        self.now += seconds
        self.own_ticks += round(own * seconds * 100)
        self.busy_ticks += round((others + own) * seconds * 100)

    def pacer(self, available: int) -> ThreadPacer:
        pacer = ThreadPacer(interval=1.0, clock=lambda: self.now, busy=lambda cpus: self.busy_ticks,
                            own=lambda: self.own_ticks)  # fmt: skip
        pacer.available, pacer.ticks_per_second = available, 100
        return pacer


def test_the_pacer_counts_the_cores_other_processes_keep_busy():
    proc = FakeProc()
    pacer = proc.pacer(available=2)
    proc.advance(0.5, others=1.0, own=1.0)
    assert pacer.others() is None  # too soon to tell
    proc.advance(1.5, others=1.0, own=1.0)
    assert pacer.others() == pytest.approx(1.0)
    proc.advance(2.0, others=0.25, own=2.0)
    assert pacer.others() == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("available", "others", "threads"), [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 3.0, 1), (8, 2.3, 6), (8, 0.0, 8)]
)
def test_one_thread_fewer_per_busy_core(available, others, threads):
    assert FakeProc().pacer(available).threads_for(others) == threads


def test_the_pacer_sets_torchs_threads_and_gives_them_back_when_the_machine_is_quiet():
    import torch

    before = torch.get_num_threads()
    proc = FakeProc()
    pacer = proc.pacer(available=2)
    try:
        proc.advance(1.0, others=1.0, own=1.0)
        pacer()
        assert torch.get_num_threads() == 1
        proc.advance(1.0, others=0.0, own=1.0)
        pacer()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


BUSY_NEIGHBOUR = """
import os, subprocess, sys, time
from backend.threads import ThreadPacer
busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
try:
    pacer = ThreadPacer(interval=0.5)
    time.sleep(1.0)
    print(pacer.others())
finally:
    busy.kill()
"""


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc")
def test_a_busy_neighbour_is_seen_as_one_busy_core():
    """A real busy loop beside an idle process: the pacer sees one core busy (measured 0.99–1.01)."""
    proc = subprocess.run([sys.executable, "-c", BUSY_NEIGHBOUR], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 0.8 < float(proc.stdout) < 1.2
