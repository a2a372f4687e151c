"""Where a running ``labeler up`` can be found: ``DATA_DIR/run/stack.json`` and its lock.

``labeler up`` holds an exclusive lock on ``run/up.lock`` for its whole life (the kernel drops it
when the process dies, even by SIGKILL) and keeps ``run/stack.json`` current: its pid, the broker
it uses, and each component's metrics port, pid and restarts. Other commands read the record to
find the stack's broker; a record whose process is gone is stale and ignored.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field, ValidationError

from storage import PermanentError


class ComponentState(BaseModel):
    """One supervised component as the record shows it."""

    name: str
    metrics_port: int | None = None  # serves /healthz and /metrics there
    celery_node: str | None = None  # Celery node name prefix (``<prefix>@host``) if a worker
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None  # e.g. "exited with code -9 at 12:03:04"


class StackRecord(BaseModel):
    """``run/stack.json``: what a second process needs to talk to a running stack."""

    pid: int
    data_dir: str
    broker_url: str  # never holds a password (Settings refuses one in the URL)
    private_redis: bool
    started_at: float = Field(default_factory=time.time)
    metrics_port: int | None = None  # the supervisor's own /metrics (component restarts)
    components: list[ComponentState] = Field(default_factory=list)
    recent: dict[str, float] | None = None  # images by outcome in the last minute, and "at"


def run_dir(data_dir: Path) -> Path:
    return data_dir.resolve() / "run"


def record_path(data_dir: Path) -> Path:
    return run_dir(data_dir) / "stack.json"


def write_record(data_dir: Path, record: StackRecord) -> None:
    """Atomically: a reader sees the old record or the new one, never half of one."""
    path = record_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json(indent=2))
    os.replace(tmp, path)


def read_record(data_dir: Path, *, stale: bool = False) -> StackRecord | None:
    """The record of the stack running on ``data_dir``; None if there is none or it is stale
    (its process is gone), unless ``stale`` asks for a dead stack's record too."""
    try:
        record = StackRecord.model_validate_json(record_path(data_dir).read_bytes())
    except (OSError, ValidationError):
        return None
    return record if stale or pid_alive(record.pid) else None


def remove_record(data_dir: Path) -> None:
    record_path(data_dir).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class StackRunning(PermanentError):
    """Another ``labeler up`` holds this data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take ``run/up.lock`` (kept until the returned file is closed or the process dies).

    Raises:
        StackRunning: another process holds it; the message names its pid and broker.
    """
    path = run_dir(data_dir) / "up.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        record = read_record(data_dir)
        where = f" using the broker at {record.broker_url}" if record else " (starting)"
        raise StackRunning(
            f"labeler up is already running on {data_dir.resolve()}: pid {holder}{where}. "
            "Use that stack (its commands find it), or stop it first."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
