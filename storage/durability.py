"""Two things a directory needs to behave like an object store: a compare-and-write that is one
step for every process on the host (per-key locks), and durability paid once for many writes.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCK_STRIPES = 256  # lock files, reused by every key that hashes to them
_LIBC = ctypes.CDLL(None, use_errno=True)


class StripeLocks:
    """Exclusive per-key locks, shared by every key in one of ``_LOCK_STRIPES`` stripes, that
    hold between the threads of a process (a mutex) and between processes (``flock`` on the
    stripe's lock file, kept open: opening it for every write cost more than the write)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._guard = threading.Lock()
        self._pid = -1
        self._stripes: dict[int, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        stripe = int(hashlib.md5(key.encode()).hexdigest()[:4], 16) % _LOCK_STRIPES  # noqa: S324
        mutex, fd = self._stripe(stripe)
        with mutex:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _stripe(self, stripe: int) -> tuple[threading.Lock, int]:
        with self._guard:
            if self._pid != os.getpid():
                # A forked child shares its parent's open lock files, and flock is held per
                # open file: it would not exclude the parent. Start afresh in each process.
                self._pid, self._stripes = os.getpid(), {}
            if stripe not in self._stripes:
                self._folder.mkdir(parents=True, exist_ok=True)
                path = self._folder / f"{stripe:03d}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._stripes[stripe] = (threading.Lock(), fd)
            return self._stripes[stripe]


def sync_filesystem(path: Path) -> None:
    """Flush every write on the file system holding ``path`` to disk: Linux's ``syncfs`` (one
    call, data and renames alike), or a whole-system ``sync`` where it is missing."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")
    finally:
        os.close(fd)
