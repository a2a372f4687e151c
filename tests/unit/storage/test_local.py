"""What only the local-directory store has to prove: the root is a wall, and writes are atomic."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
from collections import Counter
from multiprocessing.queues import Queue
from pathlib import Path

import pytest

from storage import InvalidKey, LocalStore, WriteConflict
from storage.local import TEMP_DIR_NAME


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwd").write_text("root:x")
    store = LocalStore(tmp_path / "root")
    os.symlink(outside, store.root / "link")

    with pytest.raises(InvalidKey, match="outside the store root"):
        store.get("link/passwd")
    with pytest.raises(InvalidKey):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()


def test_writes_leave_no_temp_files_and_temp_dir_is_private(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(20):
        store.put(f"k{i}", b"x" * i)
    # Only the reusable per-stripe lock files stay (conditional writes); no partial object.
    assert [p.name for p in (tmp_path / TEMP_DIR_NAME).iterdir()] == ["locks"]
    assert not list((tmp_path / TEMP_DIR_NAME).rglob("*.part"))
    assert all(not i.key.startswith(TEMP_DIR_NAME) for i in store.list())
    with pytest.raises(InvalidKey, match="reserved"):
        store.put(f"{TEMP_DIR_NAME}/x", b"x")


def test_etag_follows_changes_made_outside_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.put("a.jpg", b"one")
    (tmp_path / "a.jpg").write_bytes(b"two, written by a user")
    assert store.head("a.jpg").etag != first.etag
    assert store.head("a.jpg").etag == store.get("a.jpg").info.etag


def test_a_link_out_of_the_root_is_listed_but_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"private bytes")
    store = LocalStore(tmp_path / "root")
    os.symlink(outside, store.root / "link.jpg")

    [info] = list(store.list())

    assert info.key == "link.jpg"  # listed, so its key still gets an invalid_key record
    assert info.etag != hashlib.md5(b"private bytes").hexdigest()  # noqa: S324 - not read
    with pytest.raises(InvalidKey):
        store.get("link.jpg")


def test_links_that_stay_inside_the_root_are_followed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    (store.root / "real").mkdir()
    os.symlink("real", store.root / "relative")
    os.symlink(store.root / "real", store.root / "absolute")
    os.symlink("real/a.jpg", store.root / "file-link.jpg")

    store.put("relative/a.jpg", b"through a relative link")
    assert (store.root / "real" / "a.jpg").read_bytes() == b"through a relative link"
    assert store.get("absolute/a.jpg").data == b"through a relative link"
    assert store.get("file-link.jpg").data == b"through a relative link"


def test_a_linked_folder_out_of_the_root_gets_nothing_made_in_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(tmp_path / "root")
    os.symlink(outside, store.root / "link")

    with pytest.raises(InvalidKey, match="outside the store root"):
        store.put("link/deeper/new.json", b"x")
    assert list(outside.iterdir()) == []


def test_a_deferred_write_is_readable_at_once_and_only_a_durable_one_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    flushed: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), real_fsync(fd)))

    store.put("deferred.json", b"1", durable=False)
    assert store.get("deferred.json").data == b"1"
    assert flushed == []
    store.sync()  # one flush of the file system for everything deferred

    store.put("durable.json", b"2")
    assert len(flushed) == 1


def _create_once(root: str, keys: list[str], results: Queue[tuple[str, bool]]) -> None:
    """In another process: try to create each key, report whether this process won it."""
    store = LocalStore(root)
    for key in keys:
        try:
            store.put(key, f"{os.getpid()}".encode(), if_none_match=True, durable=False)
            results.put((key, True))
        except WriteConflict:
            results.put((key, False))


def test_create_if_absent_has_one_winner_across_processes(tmp_path: Path) -> None:
    keys = [f"labels/{i:03d}.json" for i in range(200)]
    results: Queue[tuple[str, bool]] = multiprocessing.get_context("spawn").Queue()
    racers = [
        multiprocessing.get_context("spawn").Process(
            target=_create_once, args=(str(tmp_path), keys, results)
        )
        for _ in range(4)
    ]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(len(keys) * len(racers))]
    for racer in racers:
        racer.join(timeout=60)

    winners = Counter(key for key, won in outcomes if won)
    assert winners == Counter(keys)  # every key created exactly once
    store = LocalStore(tmp_path)
    assert {info.key for info in store.list("labels/")} == set(keys)
    assert not list((tmp_path / TEMP_DIR_NAME).rglob("*.part"))


def test_create_if_absent_without_hard_links_falls_back_to_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: object, **__: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # as FAT and some network mounts answer
    store = LocalStore(tmp_path)

    store.put("r.json", b"first", if_none_match=True)
    with pytest.raises(WriteConflict):
        store.put("r.json", b"second", if_none_match=True)
    store.put("s.json", b"third", if_none_match=True)

    assert store.get("r.json").data == b"first"
    assert store.get("s.json").data == b"third"
    assert not list((tmp_path / TEMP_DIR_NAME).rglob("*.part"))
