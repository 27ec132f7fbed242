"""The backend process as the add-on sees it: start ``python -m backend serve``, talk protocol lines, stop it.

No bpy here, and nothing blocks unless asked to: a reader thread parses the backend's stdout into a queue
(:meth:`BackendProcess.messages` takes what has arrived), another keeps the last lines of its stderr (the log, shown
when it fails). The add-on's main-thread ``drain()`` polls this object; background batch runs and tests use the
blocking :meth:`BackendProcess.wait_for`.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

from . import protocol

STDERR_LINES = 40
"""How many of the backend's last stderr lines are kept for error messages."""
HANDSHAKE_SECONDS = 120.0
"""Longest wait for ``ready`` (the backend imports torch first: seconds on a warm disk, longer on a cold one)."""


class BackendError(Exception):
    """The backend could not be started, broke the protocol, or died. ``log`` holds its last stderr lines."""

    def __init__(self, message: str, log: str = ""):
        self.message = message
        self.log = log
        super().__init__(message + (f"\nBackend log (last lines):\n{log}" if log else ""))


def check_interpreter(python: str) -> Path:
    """The backend interpreter as a path, or :class:`BackendError` saying how to set it."""
    if not python:
        raise BackendError(
            "no backend interpreter is set. Run install.py from the project folder, then set the path it wrote "
            "(<venv>/backend-python.txt) in the add-on's preferences."
        )
    path = Path(python).expanduser()
    if not path.is_file():
        raise BackendError(
            f"the backend interpreter {path} does not exist. Run install.py from the project folder and set the "
            "interpreter path it prints in the add-on's preferences."
        )
    return path


class BackendProcess:
    """One running ``python -m backend serve``. Start with :meth:`start`; the handshake is sent at once and its
    answer (``ready``) arrives as a message like any other."""

    def __init__(self, python: str):
        self.python = check_interpreter(python)
        self.ready: dict | None = None
        """The backend's ``ready`` message once it arrived."""
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._threads: list[threading.Thread] = []
        self._send_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ lifetime

    def start(self) -> BackendProcess:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)  # Blender's own paths must not leak into the backend's Python
        env.pop("PYTHONHOME", None)
        try:
            self._proc = subprocess.Popen(
                [str(self.python), "-m", "backend", "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=env,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except OSError as err:
            raise BackendError(f"could not start the backend with {self.python}: {err}") from None
        self._threads = [
            threading.Thread(target=self._read_stdout, name="gtr-backend-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="gtr-backend-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.send(protocol.hello())
        return self

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_tail(self, lines: int = 12) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        """Ask the backend to shut down; kill it if it has not exited after ``grace`` seconds. Safe to repeat."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self.send(protocol.message("shutdown"))
            except BackendError:
                pass
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def kill(self) -> None:
        """End the process now (a cancel that was not answered in time, or a hung backend)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        self._close_pipes()

    def _close_pipes(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is None:
            return
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(1.0)

    # ---------------------------------------------------------------------------------------------- messaging

    def send(self, msg: dict) -> None:
        if not self.alive:
            raise BackendError("the backend is not running.", self.stderr_tail())
        line = protocol.encode(msg)
        with self._send_lock:
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            except (OSError, ValueError) as err:
                raise BackendError(f"could not write to the backend ({err}).", self.stderr_tail()) from None

    def messages(self, limit: int | None = None) -> list[dict]:
        """The messages that have arrived, oldest first, at most ``limit`` (the rest stay for the next call); never
        blocks. A line from the backend that is not a valid message arrives as an ``error`` message (error_type
        ``ProtocolError``), not dropped silently."""
        out = []
        while limit is None or len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    @property
    def gone(self) -> bool:
        """The process has exited, its output is read to the end, and every message was taken."""
        reading = bool(self._threads) and self._threads[0].is_alive()
        return not self.alive and not reading and self._queue.empty()

    def wait_for(self, types: tuple[str, ...], timeout: float, on_message=None) -> dict:
        """Block until a message of one of ``types`` arrives (others go to ``on_message``); for background runs,
        tests and the preferences' handshake. Raises :class:`BackendError` when the process dies or time is up."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(f"no {'/'.join(types)} from the backend within {timeout:.0f} s.", self.stderr_tail())
            try:
                msg = self._queue.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if not self.alive and self._queue.empty():
                    raise BackendError(self.exit_message(), self.stderr_tail()) from None
                continue
            if msg.get("type") in types:
                return msg
            if on_message is not None:
                on_message(msg)

    def handshake(self, timeout: float = HANDSHAKE_SECONDS) -> dict:
        """Wait for ``ready`` (blocking) and check its protocol version; returns it."""
        msg = self.wait_for(("ready", "error"), timeout)
        return self.accept(msg)

    def accept(self, msg: dict) -> dict:
        """Check a ``ready`` (or the backend's refusal) and remember it; :class:`BackendError` on a mismatch."""
        if msg["type"] == "error":
            raise BackendError(f"the backend refused the handshake: {msg['message']}", self.stderr_tail())
        problem = protocol.version_mismatch(msg["protocol"], "backend")
        if problem:
            raise BackendError(problem)
        self.ready = msg
        return msg

    def exit_message(self) -> str:
        code = self.returncode
        if code is None:
            return "the backend stopped answering."
        if code < 0 or code == 137:
            return (
                f"the backend process was killed (exit status {code}); it may have run out of memory — try a "
                "smaller preset or texture size."
            )
        return f"the backend process exited unexpectedly (exit status {code})."

    # ------------------------------------------------------------------------------------------------ threads

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                self._queue.put(protocol.decode(line))
            except protocol.ProtocolError as err:
                self._queue.put(protocol.error(f"unreadable line from the backend: {err}", error_type="ProtocolError"))

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            line = line.rstrip("\n")
            # the console progress bar redraws with carriage returns: keep the last state of such a line
            self._stderr.append(line.rsplit("\r", 1)[-1])


def default_python() -> str:
    """The interpreter ``install.py`` recorded (``backend-python.txt``): beside this add-on (written into an
    installed copy by ``install.py --blender``), else in the development checkout's ``.venv``; "" when neither."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "backend-python.txt", here.parent / ".venv" / "backend-python.txt"):
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text:
            return text
    return ""
