"""The add-on ↔ backend protocol module: messages survive a round trip as one line each, anything else is a
ProtocolError that says what is wrong, and the add-on's copy is the backend's, byte for byte."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from backend import protocol
from backend.protocol import ProtocolError

REPO_ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = {
    "hello": {"protocol": protocol.PROTOCOL_VERSION},
    "run": {"job_id": "j1", "job_dir": "/tmp/job 1/ünïcode", "formats": ["npz"]},
    "cancel": {"job_id": "j1"},
    "shutdown": {},
    "ready": {"protocol": 1, "backend_version": "0.1.0", "device": "cpu", "torch": "2.x", "cuda": False,
              "nvdiffrast": False},
    "progress": {"job_id": "j1", "stage": "fit", "step": 10, "total": 1200, "message": "psnr 20.1", "eta": 12.5},
    "preview": {"job_id": "j1", "path": "/tmp/job/previews/preview_00.npz", "label": "visual hull"},
    "result": {"job_id": "j1", "files": {"npz": "/tmp/job/result/mesh.npz"}, "metrics": {"faces": 12, "t": [1.5]}},
    "error": {"job_id": None, "error_type": "InputError", "message": "line one\nline two", "traceback": "",
              "view": "000", "view_index": 0, "fix": "do this"},
    "cancelled": {"job_id": "j1"},
}  # fmt: skip


def test_every_type_has_an_example_and_a_direction():
    assert set(EXAMPLES) == set(protocol.FIELDS) == set(protocol.TO_BACKEND) | set(protocol.TO_ADDON)
    assert not set(protocol.TO_BACKEND) & set(protocol.TO_ADDON)


@pytest.mark.parametrize("type_", list(EXAMPLES))
def test_round_trip_is_one_line(type_):
    msg = protocol.message(type_, **EXAMPLES[type_])
    line = protocol.encode(msg)
    assert line.endswith("\n") and "\n" not in line[:-1]  # a newline inside a value is escaped
    assert line.isascii()
    assert protocol.decode(line) == msg
    assert protocol.decode(line.rstrip("\n")) == msg  # the reader may strip the newline


def test_error_helper_fills_every_field():
    msg = protocol.error("it broke", error_type="Busy", job_id="j2")
    assert msg == {"type": "error", "job_id": "j2", "error_type": "Busy", "message": "it broke", "traceback": "",
                   "view": None, "view_index": None, "fix": ""}  # fmt: skip
    assert protocol.decode(protocol.encode(msg)) == msg
    assert protocol.hello() == {"type": "hello", "protocol": protocol.PROTOCOL_VERSION}


@pytest.mark.parametrize(
    "line, says",
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"hello"', "must be a JSON object, got str"),
        ('{"protocol": 1}', "unknown message type None"),
        ('{"type": "helo", "protocol": 1}', "unknown message type 'helo'"),
        ('{"type": "run", "job_id": "j"}', "lacks field(s) job_dir"),
        ('{"type": "progress", "job_id": "j", "stage": "fit"}', "lacks field(s) step, total, message, eta"),
    ],
)
def test_malformed_lines_raise_protocol_error(line, says):
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(").replace(")", r"\)")):
        protocol.decode(line)


def test_building_or_encoding_an_incomplete_message_fails():
    with pytest.raises(ProtocolError, match="lacks field"):
        protocol.message("cancel")
    with pytest.raises(ProtocolError, match="unknown message type"):
        protocol.encode({"type": "status"})
    with pytest.raises(ValueError):  # JSON has no NaN: the sender must replace it
        protocol.encode(protocol.message("progress", **dict(EXAMPLES["progress"], eta=float("nan"))))


def test_version_mismatch_says_what_to_do():
    assert protocol.version_mismatch(protocol.PROTOCOL_VERSION, "backend") is None
    text = protocol.version_mismatch(99, "backend")
    assert "the backend speaks protocol version 99" in text and f"this side speaks {protocol.PROTOCOL_VERSION}" in text
    assert "install.py" in text
    assert protocol.version_mismatch("1", "add-on") is not None  # a string is not the version


def test_the_addon_copy_is_byte_identical():
    backend_copy = (REPO_ROOT / "backend" / "protocol.py").read_bytes()
    addon_copy = (REPO_ROOT / "blender_addon" / "protocol.py").read_bytes()
    assert addon_copy == backend_copy, "copy backend/protocol.py over blender_addon/protocol.py (they must not differ)"


def test_the_protocol_module_imports_only_the_standard_library():
    tree = ast.parse((REPO_ROOT / "backend" / "protocol.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the add-on carries the file on its own"
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}
