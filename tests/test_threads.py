"""The CPU policy (backend/threads.py): a short OpenMP spin set before torch loads, threads from the affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.threads import cgroup_cpu_limit

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
    assert probe() == ["1000", str(expected), str(expected), str(expected)]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a process to one")
def test_a_process_pinned_to_one_cpu_uses_one_thread():
    assert probe(cpus={min(os.sched_getaffinity(0))}) == ["1000", "1", "1", "1"]


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
