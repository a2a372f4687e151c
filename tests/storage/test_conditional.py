"""Compare-and-set writes on both backends (a real moto S3 endpoint and a directory) and on the
unit tier's in-memory store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import LocalStore, ObjectStore, WriteConflict


def test_if_match_writes_only_over_the_version_read(store: ObjectStore) -> None:
    first = store.put("r.json", b"v1")
    second = store.put("r.json", b"v2", if_match=first.etag)

    with pytest.raises(WriteConflict):
        store.put("r.json", b"v3 from a stale read", if_match=first.etag)

    assert store.get("r.json").data == b"v2"
    assert store.head("r.json").etag == second.etag


def test_if_match_on_a_deleted_object_is_a_conflict(store: ObjectStore) -> None:
    first = store.put("gone.json", b"v1")
    store.delete("gone.json")

    with pytest.raises(WriteConflict):
        store.put("gone.json", b"v2", if_match=first.etag)
    assert not store.exists("gone.json")


def test_if_none_match_creates_once(store: ObjectStore) -> None:
    store.put("new.json", b"first", if_none_match=True)

    with pytest.raises(WriteConflict):
        store.put("new.json", b"second", if_none_match=True)
    assert store.get("new.json").data == b"first"


def test_local_racing_writers_from_one_read_exactly_one_wins(tmp_path: Path) -> None:
    # Many threads each read v0 and try to replace it; the lock makes compare+rename one step.
    store = LocalStore(tmp_path / "store")
    base = store.put("race.json", b"v0").etag

    def attempt(n: int) -> bool:
        try:
            store.put("race.json", f"writer {n}".encode(), if_match=base)
        except WriteConflict:
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        wins = list(pool.map(attempt, range(64)))

    assert wins.count(True) == 1
    winner = wins.index(True)
    assert store.get("race.json").data == f"writer {winner}".encode()
