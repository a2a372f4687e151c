"""Compare-and-set writes, a contract every backend keeps: imported, like ``store_contract``,
by the S3 tier and the unit tier, each with its own ``store`` fixture."""

from __future__ import annotations

import pytest

from storage import ObjectStore, WriteConflict


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
