"""SupervisedProcess's restart policy with an injected clock: the real 1, 2, 4, 8 s backoff and the
crash-loop window, checked to the instant without waiting them out. Children are fakes that
exit when told; ``tests/labeler/test_supervision.py`` runs real ones."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from labeler import supervision
from labeler.supervision import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    CRASH_LOOP_EXITS,
    CRASH_LOOP_SECONDS,
    CrashLoop,
    SupervisedProcess,
)


class FakeChild:
    """What SupervisedProcess uses of a ``Popen``: a pid, ``poll`` and ``wait``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class FakeSupervised(SupervisedProcess):
    """A SupervisedProcess whose ``start`` makes a :class:`FakeChild` instead of a process."""

    def __init__(self, log_path: Path) -> None:
        super().__init__("child", ["never-run"], {}, log_path)
        self.started: list[FakeChild] = []

    def start(self) -> None:
        child = FakeChild(pid=1000 + len(self.started))
        self.started.append(child)
        self.process = child  # type: ignore[assignment]

    def exit(self, code: int) -> None:
        self.started[-1].returncode = code


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every (process group, signal) the supervisor sends, instead of sending it."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(supervision.os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    return sent


@pytest.fixture
def child(tmp_path: Path) -> FakeSupervised:
    log_path = tmp_path / "child.log"
    log_path.write_text("line one\nbad config: LABELER_X\n")
    supervised = FakeSupervised(log_path)
    supervised.start()
    return supervised


def test_backoff_doubles_from_1_to_8_s_and_restarts_exactly_when_due(
    child: FakeSupervised, signals: list[tuple[int, int]]
) -> None:
    assert (BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS) == (1.0, 8.0)
    now = 1000.0
    delays = []
    for exits in range(1, CRASH_LOOP_EXITS):
        child.exit(3)
        assert child.supervise(now) == "exited"
        assert child.running is False
        delay = BACKOFF_FIRST_SECONDS * 2 ** (exits - 1)
        assert child.supervise(now + delay - 0.001) is None  # not yet
        assert child.supervise(now + delay) == "restarted"
        assert child.running
        assert child.restarts == exits
        assert child.supervise(now + delay) is None  # a running child: nothing to do
        delays.append(delay)
        now += delay

    assert delays == [1.0, 2.0, 4.0, 8.0]
    # Each exit killed what was left of the dead child's group, and only that group.
    assert signals == [(c.pid, signal.SIGKILL) for c in child.started[:-1]]


def test_the_fifth_exit_within_60_s_is_a_crash_loop_naming_the_log(
    child: FakeSupervised, signals: list[tuple[int, int]]
) -> None:
    now = 0.0
    for _ in range(CRASH_LOOP_EXITS - 1):
        child.exit(3)
        child.supervise(now)
        now += 8.0
        assert child.supervise(now) == "restarted"
    assert now < CRASH_LOOP_SECONDS
    child.exit(3)

    with pytest.raises(CrashLoop) as raised:
        child.supervise(now)

    assert "child exited 5 times within 60 s (last exit code 3)" in str(raised.value)
    assert "bad config: LABELER_X" in str(raised.value)
    assert child.restarts == CRASH_LOOP_EXITS - 1
    assert len(signals) == CRASH_LOOP_EXITS


def test_exits_further_apart_than_the_window_never_loop_and_back_off_from_1_s(
    child: FakeSupervised, signals: list[tuple[int, int]]
) -> None:
    now = 0.0
    for _ in range(3 * CRASH_LOOP_EXITS):
        child.exit(1)
        assert child.supervise(now) == "exited"
        assert child.supervise(now + BACKOFF_FIRST_SECONDS) == "restarted"
        now += CRASH_LOOP_SECONDS + 1  # the previous exit has left the window

    assert child.restarts == 3 * CRASH_LOOP_EXITS


def test_the_backoff_stops_growing_at_8_s(
    child: FakeSupervised, signals: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "CRASH_LOOP_EXITS", 100)
    now = 0.0
    for exits in range(1, 7):
        child.exit(1)
        child.supervise(now)
        delay = min(2.0 ** (exits - 1), 8.0)
        assert child.supervise(now + delay - 0.001) is None
        assert child.supervise(now + delay) == "restarted"
        now += delay

    assert now == 1 + 2 + 4 + 8 + 8 + 8


def test_terminate_signals_the_running_childs_whole_group(
    child: FakeSupervised, signals: list[tuple[int, int]]
) -> None:
    child.terminate()

    assert signals == [(child.started[0].pid, signal.SIGTERM)]
