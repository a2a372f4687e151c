"""Instant pick-up on a local directory: the filesystem's own notifications (inotify, through
``watchdog``), recursively.

Only completed files are reported: a file is looked at after close-after-write, a rename into
the folder, or when found in a folder just created or moved in, and it counts as complete when
nobody has it open for writing. The kernel answers that: a read lease (``F_SETLEASE``) is refused
with EAGAIN while any writer holds the file. Where leases are refused for another reason (not
the file's owner, a filesystem without leases) a file counts as complete once unchanged for
``settle`` seconds. Events lost anyway (a full inotify queue, a restart) are for the
reconciliation scan to find.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from storage.local import TEMP_DIR_NAME

log = logging.getLogger(__name__)

_WATCHED: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


class DirectoryWatcher(FileSystemEventHandler):
    """Collects the keys of completed files under ``root``; see the module docstring.

    The observer thread only records paths; :meth:`ready` (the dispatcher's thread) decides.
    """

    def __init__(self, root: Path, *, settle: float = 2.0) -> None:
        self.root = Path(root).resolve()
        self._settle = settle
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # paths reported since the last ready()
        self._pending: set[str] = set()  # paths still being written
        self._arrived = threading.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(self, str(self.root), recursive=True, event_filter=_WATCHED)
        observer.start()
        self._observer = observer
        log.info("watching %s for completed files", self.root)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None

    def wait(self, timeout: float) -> None:
        """Block until a file event arrives, at most ``timeout`` seconds."""
        if timeout > 0:
            self._arrived.wait(timeout)

    def ready(self) -> list[str]:
        """Keys of the files completed since the last call (or found complete now)."""
        self._arrived.clear()
        with self._lock:
            paths, self._seen = self._seen | self._pending, set()
        self._pending = set()
        keys = []
        for path in sorted(paths):
            state = self._state(path)
            if state == "complete":
                keys.append(Path(path).relative_to(self.root).as_posix())
            elif state == "writing":
                self._pending.add(path)
        return keys

    def again(self, keys: list[str]) -> None:
        """Report ``keys`` again on the next :meth:`ready` (they could not be handled)."""
        self._pending.update(str(self.root / key) for key in keys)

    # --- the observer thread -------------------------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.dest_path or event.src_path)
        if event.is_directory:  # its files may have been written before it was watched
            found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
        else:
            found = [path]
        with self._lock:
            self._seen.update(found)
        self._arrived.set()

    # --- deciding ------------------------------------------------------------------------------

    def _state(self, path: str) -> str:
        """``complete``, ``writing`` or ``gone`` (deleted, not a regular file, not ours)."""
        relative = Path(path).relative_to(self.root) if path.startswith(str(self.root)) else None
        if relative is None or not relative.parts or relative.parts[0] == TEMP_DIR_NAME:
            return "gone"  # the store's own temp files become objects by a rename we also see
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return "gone"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return "gone"
            return "writing" if _has_writer(fd, st.st_mtime, self._settle) else "complete"
        finally:
            os.close(fd)


def _has_writer(fd: int, mtime: float, settle: float) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        return time.time() - mtime < settle  # no lease here: judge by quiet time
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False
