"""One object-store behaviour contract, run against every backend: a real moto S3 endpoint
(``tests/storage/test_contract.py``), a directory and the unit tier's in-memory store, so that
fake behaves like them (``tests/unit/storage/test_contract.py``). Each of those modules imports
these tests and gives them its own ``store`` fixture."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage import (
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
)

ODD_KEYS = [
    "with space.jpg",
    "unicodé/ñandú 猫.png",
    "a+b=c.jpg",
    "100% real.jpg",
    "escaped%2Fslash.jpg",
    "deep/er/still/x.jpeg",
    "a-b",
    "a/b",
]


def test_round_trip_bytes_and_metadata(store: ObjectStore) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    put = store.put("cats/1.png", data, content_type="image/png")
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324

    blob = store.get("cats/1.png")
    head = store.head("cats/1.png")

    assert blob.data == data
    assert put.etag == blob.info.etag == head.etag == md5
    assert put.size == blob.info.size == head.size == len(data)
    assert head.key == "cats/1.png"
    assert head.last_modified > 0
    assert [i.key for i in store.list()] == ["cats/1.png"]
    assert store.exists("cats/1.png")


def test_overwrite_replaces_whole_object(store: ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k").data == b"second"


def test_listing_1500_keys_across_pages(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}.jpg" for i in range(1500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("other/outside.jpg", b"x")

    listed = [info.key for info in store.list("many/")]
    after = [info.key for info in store.list("many/", start_after="many/00899.jpg")]

    assert listed == keys  # S3 pages at 1,000 keys: two pages, in key order
    assert after == keys[900:]  # across the page boundary too
    assert len(list(store.list())) == 1501
    assert [i.key for i in store.list("many/0000")] == keys[:10]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_round_trip(store: ObjectStore, key: str) -> None:
    store.put(key, key.encode("utf-8"))
    assert store.get(key).data == key.encode("utf-8")
    assert [i.key for i in store.list()] == [key]


def test_listing_is_in_key_order(store: ObjectStore) -> None:
    for key in ODD_KEYS:
        store.put(key, b"x")
    assert [i.key for i in store.list()] == sorted(ODD_KEYS)


def test_etag_same_for_same_content_different_otherwise(store: ObjectStore) -> None:
    a = store.put("a.jpg", b"same bytes")
    b = store.put("b.jpg", b"same bytes")
    c = store.put("c.jpg", b"other bytes")
    assert a.etag == b.etag == store.head("a.jpg").etag
    assert c.etag != a.etag


def test_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope.jpg")
    with pytest.raises(ObjectNotFound):
        store.head("nope.jpg")
    assert not store.exists("nope.jpg")
    store.delete("nope.jpg")  # deleting what is not there is fine, as in S3


def test_delete(store: ObjectStore) -> None:
    store.put("gone.jpg", b"x")
    store.delete("gone.jpg")
    assert not store.exists("gone.jpg")
    assert list(store.list()) == []


def test_too_large_is_refused_before_reading(store: ObjectStore) -> None:
    store.put("big.bin", b"x" * 1000)
    with pytest.raises(ObjectTooLarge, match="1000 bytes"):
        store.get("big.bin", max_bytes=999)
    assert store.get("big.bin", max_bytes=1000).info.size == 1000


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "a/../../b", "a/./b", "a//b", "nul\x00byte", "dir/"]
)
def test_invalid_keys_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)
