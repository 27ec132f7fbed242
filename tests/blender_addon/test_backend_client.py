"""The add-on's side of the protocol against a real ``python -m backend serve``: handshake, a version mismatch in
either direction, a missing interpreter, a backend that dies; and the preferences' Test Backend button."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blender_addon import protocol
from blender_addon.backend_client import BackendError, BackendProcess


@pytest.fixture
def backend():
    process = BackendProcess(sys.executable).start()
    yield process
    process.stop()
    assert process.returncode is not None


def test_handshake_answers_with_versions_and_device(backend):
    import backend as backend_package

    ready = backend.handshake(timeout=60)
    assert ready["protocol"] == protocol.PROTOCOL_VERSION
    assert ready["backend_version"] == backend_package.__version__
    assert ready["device"] == "cpu" or ready["device"].startswith("cuda:")
    assert backend.ready is ready


def test_a_backend_of_another_protocol_version_is_refused(backend):
    ready = dict(backend.handshake(timeout=60), protocol=protocol.PROTOCOL_VERSION + 1)
    with pytest.raises(BackendError, match="different releases"):
        backend.accept(ready)


def test_the_backend_refuses_an_add_on_of_another_version():
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(protocol.encode({"type": "hello", "protocol": 999}), timeout=60)
    answer = protocol.decode(out.splitlines()[0])
    assert answer["type"] == "error" and answer["error_type"] == "ProtocolMismatch"
    assert "different releases" in answer["message"]
    assert proc.returncode != 0


def test_a_missing_interpreter_says_what_to_do(tmp_path):
    with pytest.raises(BackendError, match="install.py"):
        BackendProcess(str(tmp_path / "no-python"))
    with pytest.raises(BackendError, match="install.py"):
        BackendProcess("")


def test_a_backend_that_dies_is_reported_with_its_log(backend):
    backend.handshake(timeout=60)
    backend.kill()
    with pytest.raises(BackendError, match="killed") as caught:
        backend.wait_for(("result",), timeout=10)
    assert backend.returncode is not None
    assert caught.value.log == backend.stderr_tail()


@pytest.mark.blender
def test_test_backend_button_shows_the_answer(addon):
    import bpy

    assert bpy.ops.gtr.test_backend() == {"FINISHED"}
    result = bpy.context.preferences.addons[addon.name].preferences.test_result
    assert result.startswith(f"OK: backend {__import__('backend').__version__} (protocol {protocol.PROTOCOL_VERSION})")
    assert "device cpu" in result or "device cuda" in result


def test_messages_are_taken_at_most_limit_at_a_time(backend, tmp_path):
    import time

    backend.handshake(timeout=60)
    for n in range(3):  # each answered by one error: the first for its missing job.json, the others Busy or alike
        backend.send(protocol.message("run", job_id=f"job{n}", job_dir=str(tmp_path / f"missing{n}")))
    deadline = time.monotonic() + 30
    while backend._queue.qsize() < 3:
        assert time.monotonic() < deadline, "the backend did not answer three runs"
        time.sleep(0.05)
    first, rest = backend.messages(limit=2), backend.messages()
    assert len(first) == 2 and len(rest) == 1  # nothing beyond the limit is lost
    assert sorted(m["job_id"] for m in first + rest) == ["job0", "job1", "job2"]  # Busy may overtake job0's error
