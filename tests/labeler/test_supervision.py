"""SupervisedProcess with real child processes: restarts with backoff, and a crash loop stops."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from labeler import supervision
from labeler.supervision import CrashLoop, SupervisedProcess
from testbed.waiting import wait_until


@pytest.fixture(autouse=True)
def _short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(supervision, "BACKOFF_MAX_SECONDS", 0.2)


def _child(tmp_path: Path, code: str) -> SupervisedProcess:
    argv = [sys.executable, "-c", code]
    return SupervisedProcess("child", argv, dict(os.environ), tmp_path / "child.log")


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _supervise_for(child: SupervisedProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        child.supervise(time.monotonic())
        time.sleep(0.02)


def test_a_killed_child_is_restarted_and_its_leftovers_are_killed(tmp_path: Path) -> None:
    # The child forks a grandchild that would outlive it (as prefork pool processes do).
    child = _child(
        tmp_path,
        "import os, time\n"
        "if os.fork() == 0:\n    time.sleep(600)\n"
        "print('started', flush=True)\ntime.sleep(600)",
    )
    child.start()
    try:
        first = child.pid
        assert first is not None
        wait_until(lambda: b"started" in child.log_path.read_bytes(), 30, "child started")
        os.kill(first, signal.SIGKILL)
        events = []
        deadline = time.monotonic() + 30
        while "restarted" not in events and time.monotonic() < deadline:
            events.append(child.supervise(time.monotonic()))
            time.sleep(0.02)
        assert events.count("exited") == 1
        assert child.running
        assert child.pid != first
        assert child.restarts == 1
        assert child.last_exit is not None
        assert "code -9" in child.last_exit
        wait_until(lambda: _group_gone(first), 10, "the old group, grandchild included, gone")
    finally:
        child.terminate()
        child.wait(time.monotonic() + 10)


def test_a_crash_loop_stops_with_the_last_log_lines(tmp_path: Path) -> None:
    child = _child(tmp_path, "import sys; print('bad config: LABELER_X'); sys.exit(3)")
    child.start()
    with pytest.raises(CrashLoop) as raised:
        _supervise_for(child, 60)
    assert "child exited 5 times within 60 s (last exit code 3)" in str(raised.value)
    assert "bad config: LABELER_X" in str(raised.value)
    assert child.restarts == 4
