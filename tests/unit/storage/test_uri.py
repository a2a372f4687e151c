"""Store URIs: which store a ``file://`` or ``s3://`` URI opens, and what a bad one says."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import (
    InvalidStoreUri,
    LocalStore,
    S3Options,
    S3Store,
    check_store_uri,
    join_uri,
    make_s3_client,
    open_store,
)
from storage.keys import label_key, source_key
from testbed.processes import TEST_CREDENTIALS


def test_file_uri_opens_a_local_store(tmp_path: Path) -> None:
    store = open_store((tmp_path / "x y").as_uri())
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "x y").resolve()


def test_s3_uri_opens_an_s3_store_with_prefix() -> None:
    # Opening a store makes no request: a client for an endpoint nothing listens on will do.
    options = S3Options(endpoint_url="http://127.0.0.1:9", **TEST_CREDENTIALS)
    store = open_store("s3://my-bucket/some/prefix/", s3_client=make_s3_client(options))
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix/")


def test_s3_uri_needs_a_client() -> None:
    with pytest.raises(ValueError, match="s3_client"):
        open_store("s3://bucket/x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://bucket/x", "expected s3://"),
        ("s3://Bad_Bucket/x", "bucket"),
        ("file://relative/dir", "three slashes"),
        ("/just/a/path", "scheme ''"),
    ],
)
def test_bad_uris_say_what_to_fix(uri: str, message: str) -> None:
    with pytest.raises(InvalidStoreUri, match=message):
        check_store_uri(uri)


def test_join_and_label_keys() -> None:
    assert join_uri("s3://b/root/", "labels") == "s3://b/root/labels"
    assert label_key("cats/1.jpg") == "cats/1.jpg.json"
    assert source_key("cats/1.jpg.json") == "cats/1.jpg"
