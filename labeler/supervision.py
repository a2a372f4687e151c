"""A child process that is restarted with backoff when it exits, until it exits too often.

Each child runs in its own session (its own process group), so Ctrl-C in the terminal reaches
only the supervisor, which then stops the children in order, and so the leftovers of a child
whose main process died (prefork pool processes) can be killed with the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from storage import PermanentError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # resolved before any fork

CRASH_LOOP_EXITS = 5  # this many exits within CRASH_LOOP_SECONDS stop the stack
CRASH_LOOP_SECONDS = 60.0
BACKOFF_FIRST_SECONDS = 1.0  # then 2, 4, 8: each restart comes back within 10 s
BACKOFF_MAX_SECONDS = 8.0
LOG_TAIL_CHARS = 2000


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL (Linux), so a killed
    ``labeler up`` leaves no components behind holding the data directory's ports."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StackFailed(PermanentError):
    """``labeler up`` or the demo cannot go on: a component, a port or the private Redis."""


class CrashLoop(StackFailed):
    """A child keeps exiting; the message names it and ends with its last log lines."""


class SupervisedProcess:
    """One child: started, watched, restarted after ``1, 2, 4, 8 s`` of backoff, stopped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self._exits: deque[float] = deque()
        self._restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def supervise(self, now: float) -> str | None:
        """Notice an exit or make a due restart; returns ``"exited"``, ``"restarted"`` or None.

        Raises:
            CrashLoop: the child exited CRASH_LOOP_EXITS times within CRASH_LOOP_SECONDS.
        """
        if self._restart_at is not None:
            if now < self._restart_at:
                return None
            self._restart_at = None
            self.restarts += 1
            self.start()
            log.warning("%s restarted (restart %d, pid %s)", self.name, self.restarts, self.pid)
            return "restarted"
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self._kill_group(signal.SIGKILL)  # a dead worker's pool processes would hold its batch
        self._exits.append(now)
        while self._exits and self._exits[0] < now - CRASH_LOOP_SECONDS:
            self._exits.popleft()
        self.last_exit = f"exited with code {code} at {time.strftime('%H:%M:%S')}"
        if len(self._exits) >= CRASH_LOOP_EXITS:
            raise CrashLoop(
                f"{self.name} exited {len(self._exits)} times within {CRASH_LOOP_SECONDS:.0f} s "
                f"(last exit code {code}); stopping. Its log ({self.log_path}) ends:\n"
                f"{self.log_tail()}"
            )
        delay = min(BACKOFF_FIRST_SECONDS * 2 ** (len(self._exits) - 1), BACKOFF_MAX_SECONDS)
        self._restart_at = now + delay
        log.warning("%s %s; restarting in %.0f s", self.name, self.last_exit, delay)
        return "exited"

    def terminate(self) -> None:
        """Ask it to finish (SIGTERM to its group); pending restarts are dropped."""
        self._restart_at = None
        if self.running:
            self._kill_group(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic), then kill what is left of its group."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time: killing it", self.name)
            self._kill_group(signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # its session's group id is its pid
