"""The reconciliation scan on both real store backends: sorted listings walked side by side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import LocalStore, ObjectStore, S3Store
from workers.reconcile import Reconciler

# Keys whose label keys sort differently from them ("a.b.json" < "a.json"), and folders that
# sort between files ("a-b" < "a/b" < "a0").
AWKWARD = [
    "a.b", "a-b", "a/b.json.png", "a/b", "a0", "a.json", "b/c.d/e", "b/c/e", "b/c.png",
    "b/c-", "z", "ñ/猫.png", "with space/x+y%2F.png",
]  # fmt: skip


def _stores(kind: str, tmp_path: Path, s3_store: S3Store) -> tuple[ObjectStore, ObjectStore]:
    if kind == "local":
        return LocalStore(tmp_path / "incoming"), LocalStore(tmp_path / "labels")
    client, bucket = s3_store._client, s3_store.bucket
    return S3Store(client, bucket, "in"), S3Store(client, bucket, "labels")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_both_backends_list_in_key_order(kind: str, tmp_path: Path, s3_store: S3Store) -> None:
    incoming, _ = _stores(kind, tmp_path, s3_store)
    for key in AWKWARD:
        incoming.put(key, b"x")

    assert [info.key for info in incoming.list()] == sorted(AWKWARD)
    assert [info.key for info in incoming.list(etags=False)] == sorted(AWKWARD)  # cheap, same order
    after = [i.key for i in incoming.list("a", start_after="a-b")]
    assert after == ["a.b", "a.json", "a/b", "a/b.json.png", "a0"]
    after = [i.key for i in incoming.list("b/c", start_after="b/c-")]
    assert after == ["b/c.d/e", "b/c.png", "b/c/e"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 1000])
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_each_chunk_finds_exactly_the_objects_without_a_record(
    kind: str, chunk: int, tmp_path: Path, s3_store: S3Store
) -> None:
    incoming, labels = _stores(kind, tmp_path, s3_store)
    for key in AWKWARD:
        incoming.put(key, b"x")
    unlabeled = {"a.b", "a/b", "b/c-", "ñ/猫.png"}
    for key in AWKWARD:
        if key not in unlabeled:
            labels.put(f"{key}.json", b"{}")
    labels.put("orphan.png.json", b"{}")  # a record whose object was deleted: not an object

    found = [info.key for part in Reconciler(incoming, labels, chunk).chunks() for info in part]

    assert sorted(found) == sorted(unlabeled)


def test_a_record_older_than_its_object_sends_it_again(tmp_path: Path) -> None:
    incoming, labels = LocalStore(tmp_path / "incoming"), LocalStore(tmp_path / "labels")
    for key in ("old.png", "new.png"):
        incoming.put(key, b"x")
        labels.put(f"{key}.json", b"{}")
    later = (tmp_path / "labels" / "new.png.json").stat().st_mtime + 10
    os.utime(tmp_path / "incoming" / "new.png", (later, later))  # re-uploaded after its record

    found = [info.key for part in Reconciler(incoming, labels).chunks() for info in part]

    assert found == ["new.png"]
