"""The directory watcher on a real directory with real inotify: completed files only."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.waiting import wait_until
from workers.dispatch import DirectoryWatcher


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[DirectoryWatcher]:
    found = DirectoryWatcher(tmp_path / "incoming")
    found.start()
    yield found
    found.stop()


def collect(watcher: DirectoryWatcher, keys: list[str], until: set[str], timeout: float) -> None:
    """Poll ``ready()`` as the dispatcher does, appending what it reports, until ``until``."""

    def done() -> bool:
        watcher.wait(0.2)
        keys.extend(watcher.ready())
        return until <= set(keys)

    wait_until(done, timeout, f"{len(until)} keys reported", every=0.0)


def test_a_file_written_slowly_is_reported_only_once_it_is_complete(
    watcher: DirectoryWatcher,
) -> None:
    path = watcher.root / "big.bin"
    closed = threading.Event()

    def write_slowly() -> None:
        with path.open("wb") as f:
            for _ in range(20):
                f.write(os.urandom(1 << 20))
                f.flush()
                time.sleep(0.05)  # pacing the writer, not waiting for a condition
        closed.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    sizes: list[int] = []  # the file's size whenever it was reported
    deadline = time.monotonic() + 30
    while not (closed.is_set() and sizes) and time.monotonic() < deadline:
        watcher.wait(0.05)
        sizes += [path.stat().st_size for _ in watcher.ready()]
    writer.join()
    watcher.wait(0.5)
    sizes += [path.stat().st_size for _ in watcher.ready()]

    assert sizes, "never reported"
    assert set(sizes) == {20 << 20}  # never while it was being written


def test_nested_folders_renames_and_moved_in_folders_are_reported(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "album" / "day 1").mkdir(parents=True)
    (outside / "album" / "day 1" / "a.png").write_bytes(b"a")
    (outside / "moved.png").write_bytes(b"m")
    reported: list[str] = []

    (watcher.root / "x" / "y" / "z").mkdir(parents=True)
    (watcher.root / "x" / "y" / "z" / "deep.png").write_bytes(b"d")
    os.rename(outside / "moved.png", watcher.root / "x" / "moved.png")
    os.rename(outside / "album", watcher.root / "album")
    (watcher.root / "x" / "part.tmp").write_bytes(b"p")
    os.rename(watcher.root / "x" / "part.tmp", watcher.root / "x" / "done.png")

    expected = {"x/y/z/deep.png", "x/moved.png", "album/day 1/a.png", "x/done.png"}
    collect(watcher, reported, expected, 20)
    assert set(reported) - {"x/part.tmp"} == expected


def test_a_thousand_files_copied_at_once_are_all_reported(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    source = tmp_path / "camera"
    for folder in range(10):
        (source / f"roll {folder}").mkdir(parents=True)
        for n in range(100):
            (source / f"roll {folder}" / f"{n:03d}.png").write_bytes(b"%d" % n)
    expected = {f"camera/roll {f}/{n:03d}.png" for f in range(10) for n in range(100)}
    reported: list[str] = []

    shutil.copytree(source, watcher.root / "camera")

    collect(watcher, reported, expected, 60)
    assert set(reported) == expected


def test_the_stores_own_temp_files_are_not_reported(watcher: DirectoryWatcher) -> None:
    from storage import LocalStore

    LocalStore(watcher.root).put("via/store.png", b"x")  # a temp file, then a rename
    reported: list[str] = []

    collect(watcher, reported, {"via/store.png"}, 10)
    assert all(not k.startswith(".labeler-tmp") for k in reported)
