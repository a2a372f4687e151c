"""``S3Store.put_file``: a big local file goes up in parts and reads back whole (moto server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storage import PermanentStorageError, S3Store
from storage.s3 import S3Client


def test_a_file_bigger_than_one_part_uploads_whole(s3_store: S3Store, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(os.urandom(9 * 2**20))  # past boto3's 8 MiB multipart threshold

    s3_store.put_file("exports/big.jsonl", path)

    blob = s3_store.get("exports/big.jsonl")
    assert hashlib.sha256(blob.data).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert "-" in blob.info.etag  # a multipart ETag: it really went up in parts


def test_a_missing_bucket_is_a_storage_error(s3_client: S3Client, tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_text("x")
    store = S3Store(s3_client, "no-such-bucket-here")

    with pytest.raises(PermanentStorageError, match="NoSuchBucket"):
        store.put_file("a.txt", path)
