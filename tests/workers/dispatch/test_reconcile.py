"""The reconciliation scan on both real store backends: sorted listings walked side by side."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import Blob, LocalStore, ObjectInfo, ObjectStore, S3Store
from tests.support.memory_store import MemoryStore
from tests.support.records import record_for
from workers.dispatch import Reconciler

# Keys whose label keys sort differently from them ("a.b.json" < "a.json"), and folders that
# sort between files ("a-b" < "a/b" < "a0").
AWKWARD = [
    "a.b",
    "a-b",
    "a/b.json.png",
    "a/b",
    "a0",
    "a.json",
    "b/c.d/e",
    "b/c/e",
    "b/c.png",
    "b/c-",
    "z",
    "ñ/猫.png",
    "with space/x+y%2F.png",
]


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
            labels.put(f"{key}.json", record_for(incoming, key))
    labels.put("orphan.png.json", b"{}")  # a record whose object was deleted: not an object

    found = [info.key for part in Reconciler(incoming, labels, chunk).chunks() for info in part]

    assert sorted(found) == sorted(unlabeled)


def test_a_record_older_than_its_object_sends_it_again(tmp_path: Path) -> None:
    incoming, labels = LocalStore(tmp_path / "incoming"), LocalStore(tmp_path / "labels")
    for key in ("old.png", "new.png"):
        incoming.put(key, b"x")
        labels.put(f"{key}.json", record_for(incoming, key))
    later = (tmp_path / "labels" / "new.png.json").stat().st_mtime + 10
    os.utime(tmp_path / "incoming" / "new.png", (later, later))  # re-uploaded after its record

    found = [info.key for part in Reconciler(incoming, labels).chunks() for info in part]

    assert found == ["new.png"]


class WholeSeconds(MemoryStore):
    """The in-memory store listing ``last_modified`` floored to the second, as S3 does."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__(clock=lambda: clock[0])

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        for info in super().list(prefix, start_after=start_after, etags=etags):
            yield ObjectInfo(info.key, info.size, info.etag, math.floor(info.last_modified))


def _same_second(record_etag: str | None) -> tuple[WholeSeconds, WholeSeconds, list[float]]:
    """An object and its record written in one second (by ``record_etag``, or the object's
    own ETag when None); the clock then moves on to the next second."""
    clock = [1000.2]
    incoming, labels = WholeSeconds(clock), WholeSeconds(clock)
    incoming.put("a.png", b"image")
    clock[0] = 1000.7
    labels.put("a.png.json", record_for(incoming, "a.png", record_etag))
    clock[0] = 1001.3
    return incoming, labels, clock


def test_a_current_record_in_its_objects_second_is_read_once_and_re_stamped() -> None:
    incoming, labels, _ = _same_second(None)
    written = labels.get("a.png.json").data
    reconciler = Reconciler(incoming, labels)

    assert [info for part in reconciler.chunks() for info in part] == []
    assert labels.keys_read == ["a.png.json", "a.png.json"]  # the test's own read, then one
    assert (reconciler.stats.verified, reconciler.stats.restamped) == (1, 1)
    assert labels.get("a.png.json").data == written
    assert next(labels.list()).last_modified == 1001  # now in a later second than the object

    reads, puts = len(labels.keys_read), labels.calls["put"]
    assert [info for part in reconciler.chunks() for info in part] == []
    assert (len(labels.keys_read), labels.calls["put"]) == (reads, puts)  # nothing read: newer
    assert (reconciler.stats.verified, reconciler.stats.restamped) == (0, 0)


def test_a_record_of_other_content_in_its_objects_second_sends_the_object() -> None:
    incoming, labels, _ = _same_second("a different etag")  # re-uploaded in the record's second
    reconciler = Reconciler(incoming, labels)

    found = [info.key for part in reconciler.chunks() for info in part]

    assert found == ["a.png"]
    assert labels.calls["put"] == 1  # only the test's: a stale record is not re-stamped
    assert (reconciler.stats.verified, reconciler.stats.restamped) == (1, 0)


def test_a_re_upload_while_the_record_is_checked_is_sent_not_hidden() -> None:
    clock = [1000.2]
    incoming = WholeSeconds(clock)

    class Racing(WholeSeconds):
        def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
            incoming.put("a.png", b"edited")  # after the listing, before the re-stamp...
            clock[0] = 1002.1  # ...which then lands in a later second than the re-upload
            return super().get(key, max_bytes=max_bytes)

    labels = Racing(clock)
    incoming.put("a.png", b"image")
    labels.put("a.png.json", record_for(incoming, "a.png"))
    clock[0] = 1001.3

    found = [info.key for part in Reconciler(incoming, labels).chunks() for info in part]

    assert found == ["a.png"]
    assert labels.calls["put"] == 2  # re-stamped before the re-upload was seen
