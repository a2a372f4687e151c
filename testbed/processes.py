"""Real labeler processes (workers, CLI commands) started the way a user starts them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.services import free_port
from testbed.waiting import wait_until

_SENT = re.compile(rb"dispatched batch \S+: (\d+) images")
TEST_CREDENTIALS = {"access_key_id": "testing-key", "secret_access_key": "testing-secret"}

LABELER = [sys.executable, "-m", "labeler"]


def labeler_env(**settings: object) -> dict[str, str]:
    """The current environment without any LABELER_*, plus ``settings`` as LABELER_<NAME>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELER_")}
    env.update({f"LABELER_{k.upper()}": str(v) for k, v in settings.items()})
    env.setdefault("LABELER_METRICS_PORT", "0")  # several workers share this machine's ports
    # `labeler up` runs the review app: each stack a port of its own, never the default 8300.
    env.setdefault("LABELER_REVIEW_PORT", str(free_port()))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_labeler(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion; fail loudly with its output if it fails."""
    result = subprocess.run(
        [*LABELER, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"labeler {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


class WorkerProcess:
    """``labeler worker`` in its own process group, with its log in a file.

    ``cwd`` (default: this one) is where ``python -m labeler`` finds the package first: a
    benchmark runs another checkout's worker from that checkout's root.
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, *args: str, cwd: Path | None = None
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*LABELER, "worker", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can signal the prefork children
        )
        wait_until(
            lambda: b"ready." in self.log_path.read_bytes() or self._died(),
            120,
            f"worker ready (log: {self.log_path})",
        )
        if self._died():
            raise AssertionError(f"worker died at start-up:\n{self.log_tail()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None


def tensorflow_libraries(pid: int) -> list[str]:
    """TensorFlow's shared libraries mapped into process ``pid``: empty if it never imported
    TensorFlow (TensorFlow never unloads them). OpenVINO's TensorFlow frontend does not count."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    return sorted(
        p
        for p in paths
        if ("/tensorflow/" in p and "/openvino/" not in p)
        or Path(p).name.startswith("libtensorflow")
    )


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, *args: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, log_path, *args).start()
    try:
        yield worker
    finally:
        worker.stop()


class DispatcherProcess:
    """``labeler dispatch`` with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DispatcherProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*LABELER, "dispatch"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: b"dispatching events from" in self.log_path.read_bytes() or not self.alive,
            60,
            f"dispatcher started (log: {self.log_path})",
        )
        assert self.alive, f"dispatcher died at start-up:\n{self.log()}"
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and return its exit code."""
        assert self.process is not None
        if self.alive:
            self.process.send_signal(sig)
        return self.process.wait(30)

    def sent(self) -> list[int]:
        """Keys per batch it sent, from its log."""
        return [int(n) for n in _SENT.findall(self.log_path.read_bytes())]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]
