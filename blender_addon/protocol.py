"""The protocol between the Blender add-on and ``python -m backend serve``: JSON lines over the backend's
stdin/stdout (stderr is a log). Standard library only.

This file exists twice, byte for byte: ``backend/protocol.py`` and ``blender_addon/protocol.py`` (a test keeps
them identical). Bulk data never travels in a message: inputs and outputs are files in a per-job folder.

Conversation::

    add-on                                 backend
    hello {protocol}                 →
                                     ←     ready {protocol, backend_version, device, torch, cuda, nvdiffrast}
    run {job_id, job_dir, formats}   →     (job_dir holds job.json and the images; results go to job_dir/result)
                                     ←     progress {job_id, stage, step, total, message, eta}   (many)
                                     ←     preview {job_id, path, label}   (a mesh .npz to show now; a few)
                                     ←     result {job_id, files, metrics}  | error {...} | cancelled {job_id}
    cancel {job_id}                  →     (the job stops at its next cancel point, within about a second)
    shutdown {}                      →     (the backend exits)

Every message is one JSON object on one line with a ``type``; the fields each type must carry are in
:data:`FIELDS`. An ``error`` carries ``job_id`` (null when no job is at fault), ``error_type`` (the exception's
class name, e.g. ``InputError``, ``ProtocolError``, ``Busy``), ``message``, ``traceback`` (empty for input
errors), and for input errors ``view`` / ``view_index`` (the view at fault, or null) and ``fix``.

Details both sides rely on:

- ``hello`` must come first; anything else before it gets an ``error`` (``ProtocolError``) and the backend keeps
  waiting. A different ``protocol`` gets an ``error`` with ``error_type`` ``ProtocolMismatch`` (the message of
  :func:`version_mismatch`) and the backend exits with a non-zero status.
- ``ready``: ``device`` is ``"cpu"`` or ``"cuda:N (GPU name)"``; ``torch`` is torch's version; ``cuda`` and
  ``nvdiffrast`` are booleans (nvdiffrast: its torch module imports on a CUDA machine).
- ``run``: ``job_dir`` is an absolute folder holding ``job.json``; ``formats`` (optional, default
  ``["npz", "glb"]``) lists the files wanted, from ``npz``, ``glb``, ``obj``, ``ply``. One job runs at a time: a
  ``run`` while one runs gets an ``error`` of type ``Busy`` (with the new run's ``job_id``) and the running job
  goes on. A line that is not a valid message gets an ``error`` of type ``ProtocolError``; the backend goes on.
- ``progress``: ``stage`` is one of ``backend.progress.STAGES``; ``step`` of ``total``. At most about ten per
  second per stage are sent, but always a stage's first and last report. ``eta`` is the seconds left in the
  current stage at its rate so far (from the stage's first report, restarted when its ``total`` changes or its
  ``step`` goes back), null until the stage has advanced by a step, 0 at its last step; it says nothing about
  later stages.
- ``preview``: ``path`` is ``<job_dir>/previews/preview_NN.npz`` (NN from 00, written atomically), the layout
  of the result's ``mesh.npz``, in the job's world frame; ``label`` says what it is (``"visual hull"``, no
  colours; ``"surface"``, vertex colours before texture refinement; ``"refined surface"``, the same after the
  ``fit`` method's geometry refinement). Each preview replaces the one before.
- ``result``: ``files`` maps each written kind (``npz``, ``glb``, ..., ``texture`` for a UV texture) to an
  absolute path under ``<job_dir>/result``; ``metrics`` is that folder's ``metrics.json`` (timings, warnings,
  face count, ...; a non-finite number is sent as null).
- ``cancel`` for a job that is not running (it already ended with its ``result``, ``error`` or ``cancelled``) is
  ignored. ``shutdown`` cancels a running job first, then the backend exits with status 0; so does the end of
  its stdin (the add-on is gone).
"""

from __future__ import annotations

import json

PROTOCOL_VERSION = 1
"""Raised whenever a message's meaning changes; both sides refuse to talk across versions."""

RESULT_FOLDER = "result"
"""Where, inside a job folder, the backend writes a job's final files (``mesh.npz``, ``mesh.glb``, ...)."""
PREVIEW_FOLDER = "previews"
"""Where, inside a job folder, the backend writes preview meshes (``.npz``, the same layout as the result's)."""

FIELDS: dict[str, tuple[str, ...]] = {
    # add-on → backend
    "hello": ("protocol",),
    "run": ("job_id", "job_dir"),
    "cancel": ("job_id",),
    "shutdown": (),
    # backend → add-on
    "ready": ("protocol", "backend_version", "device", "torch", "cuda", "nvdiffrast"),
    "progress": ("job_id", "stage", "step", "total", "message", "eta"),
    "preview": ("job_id", "path", "label"),
    "result": ("job_id", "files", "metrics"),
    "error": ("job_id", "error_type", "message", "traceback", "view", "view_index", "fix"),
    "cancelled": ("job_id",),
}
"""Message type → the fields it must carry (it may carry more)."""

TO_BACKEND = ("hello", "run", "cancel", "shutdown")
TO_ADDON = ("ready", "progress", "preview", "result", "error", "cancelled")


class ProtocolError(Exception):
    """A line that is not a valid message (not JSON, not an object, unknown type, missing fields)."""


def message(type_: str, **fields) -> dict:
    """A message dict of ``type_``; raises :class:`ProtocolError` when a required field is missing."""
    msg = {"type": type_, **fields}
    check(msg)
    return msg


def check(msg: object) -> dict:
    """``msg`` if it is a well-formed message, else :class:`ProtocolError` saying what is wrong."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}")
    type_ = msg.get("type")
    if type_ not in FIELDS:
        raise ProtocolError(f"unknown message type {type_!r}; known: {', '.join(FIELDS)}")
    missing = [name for name in FIELDS[type_] if name not in msg]
    if missing:
        raise ProtocolError(f"message {type_!r} lacks field(s) {', '.join(missing)}")
    return msg


def encode(msg: dict) -> str:
    """One line of JSON (with its newline) for a checked message."""
    return json.dumps(check(msg), separators=(",", ":"), allow_nan=False) + "\n"


def decode(line: str) -> dict:
    """The message on one line; raises :class:`ProtocolError` for anything that is not a valid message."""
    try:
        msg = json.loads(line)
    except ValueError as err:
        raise ProtocolError(f"not JSON ({err}): {line.strip()[:80]!r}") from None
    return check(msg)


def hello() -> dict:
    return message("hello", protocol=PROTOCOL_VERSION)


def version_mismatch(theirs: object, side: str) -> str | None:
    """None when ``theirs`` is this file's version, else a message for the user saying what to do. ``side`` is
    the other side's name (``"backend"`` or ``"add-on"``)."""
    if theirs == PROTOCOL_VERSION:
        return None
    return (
        f"the {side} speaks protocol version {theirs!r}, this side speaks {PROTOCOL_VERSION}: the add-on and the "
        "backend come from different releases. Install both from the same release (run install.py from the "
        "same checkout as the add-on, and point the add-on's preferences at the interpreter it wrote)."
    )


def error(
    message_: str,
    *,
    error_type: str,
    job_id: str | None = None,
    traceback: str = "",
    view: str | None = None,
    view_index: int | None = None,
    fix: str = "",
) -> dict:
    return message(
        "error",
        job_id=job_id,
        error_type=error_type,
        message=message_,
        traceback=traceback,
        view=view,
        view_index=view_index,
        fix=fix,
    )
