"""What every results file under ``bench/results/`` starts with, and how a phase is measured.

A figure is only worth comparing when a reader can tell which code made it and whether the
machine was quiet: each file records the commit, whether the tree was clean, when the run
started, the machine, and for every phase it compares (reference runs included) how many cores
other processes kept busy meanwhile. A comparison whose phases were disturbed is marked
untrusted by :func:`trusted`, never silently counted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.procstat import CpuWindow, machine_info, process_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).parent / "results"
# Other processes' CPU, in cores averaged over a phase, above which a rate measured on a
# 2-core machine is not trustworthy: the measured process did not get the cores.
FOREIGN_LOAD_LIMIT = 0.25


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def run_header() -> dict[str, Any]:
    """Commit, clean-tree flag, changed files, start time (UTC) and the machine."""
    changed = [line for line in _git("status", "--porcelain").splitlines() if line]
    return {
        "commit": _git("rev-parse", "HEAD"),
        "clean_tree": not changed,
        "changed_files": changed,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }


@contextmanager
def phase(record: dict[str, Any], *pids: int) -> Iterator[dict[str, Any]]:
    """Measure one phase: its wall time and the foreign CPU load while it ran.

    Adds ``cpu`` (our and foreign cores, see :class:`CpuWindow`) to ``record``. ``pids`` are
    the processes doing the measured work (their whole trees count as ours); this process is
    always ours.
    """
    pids_ours = {"bench": [os.getpid()]}
    for pid in pids:
        pids_ours[f"pid{pid}"] = process_tree(pid)
    window = CpuWindow(pids_ours).start()
    try:
        yield record
    finally:
        record["cpu"] = window.stop()


def trusted(*records: dict[str, Any]) -> bool:
    """Whether every phase of a comparison ran on a quiet enough machine."""
    return all(r["cpu"]["foreign_cores"] <= FOREIGN_LOAD_LIMIT for r in records)


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the header first; returns the path."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
