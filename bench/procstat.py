"""What processes cost, read straight from ``/proc`` (Linux only; psutil is not a dependency)."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (e.g. a Celery worker and its prefork children)."""
    found = [pid]
    for task in (_PROC / str(pid) / "task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # the thread ended while we looked
        for child in children:
            found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (every thread, live or ended), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICKS


def rss_bytes(pids: list[int]) -> int:
    """Sum of ``VmRSS`` of ``pids`` in bytes (shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            status = (_PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``)."""
    values = [int(v) for v in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS  # guest time is already inside user


@dataclass
class CpuWindow:
    """CPU used by some processes, and by the whole machine, between ``start`` and ``stop``."""

    pids: dict[str, list[int]]
    _started: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0
    _busy: float = 0.0

    def start(self) -> CpuWindow:
        self._started = {name: cpu_seconds(p) for name, p in self.pids.items()}
        self._busy = system_busy_seconds()
        self._wall = time.perf_counter()
        return self

    def add_started(self, name: str, pids: list[int]) -> None:
        """Count ``pids`` as ours too: processes started after :meth:`start`, so all their CPU
        time falls in the window."""
        self.pids[name] = pids
        self._started[name] = 0.0

    def stop(self) -> dict[str, Any]:
        """Seconds of CPU per named group, and cores busy on average (machine-wide too)."""
        wall = time.perf_counter() - self._wall
        out: dict[str, Any] = {"wall_seconds": round(wall, 3)}
        ours = 0.0
        for name, pids in self.pids.items():
            used = cpu_seconds(pids) - self._started[name]
            ours += used
            out[f"{name}_cpu_seconds"] = round(used, 2)
            out[f"{name}_cores"] = round(used / wall, 3)
        busy = system_busy_seconds() - self._busy
        out["machine_busy_cores"] = round(busy / wall, 3)
        # Anything else running on the machine (another user's jobs): a measurement is only
        # trustworthy when this is near zero.
        out["foreign_cores"] = round(max(0.0, busy - ours) / wall, 3)
        return out


class RssSampler:
    """Samples the RSS of a process tree in a background thread while a run goes on."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(process_tree(self.pid))
            self.samples.append((round(time.perf_counter() - self._t0, 2), rss))
            self._stop.wait(self.every)


def busy_cores(seconds: float = 3.0) -> float:
    """Cores the whole machine keeps busy over ``seconds``: is it quiet enough to measure?"""
    before = system_busy_seconds()
    time.sleep(seconds)
    return round((system_busy_seconds() - before) / seconds, 3)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory and library versions: what a reader needs to compare runs."""
    cpuinfo = (_PROC / "cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        "unknown",
    )
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    meminfo = (_PROC / "meminfo").read_text().splitlines()[0].split()
    libraries = ("tensorflow", "keras", "pillow", "numpy", "celery", "redis", "boto3", "moto")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "cpu_flags_of_note": sorted(
            f for f in flags.split() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")
        ),
        "memory_gib": round(int(meminfo[1]) / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": {lib: version(lib) for lib in libraries},
        "gpu": "none (CPU only)",
    }
