"""The object-store contract (``tests/support/store_contract.py``, ``store_conditional.py``)
against a real S3 endpoint (moto server), and what only the S3 store has to prove."""

from __future__ import annotations

from storage import S3Store
from storage.s3 import S3Client
from tests.support.store_conditional import *  # noqa: F403 - the shared contract's tests
from tests.support.store_contract import *  # noqa: F403


def test_s3_store_lives_under_its_prefix(s3_store: S3Store, s3_client: S3Client) -> None:
    s3_store.put("x.jpg", b"x")
    raw = s3_client.boto3.list_objects_v2(Bucket=s3_store.bucket)
    assert [o["Key"] for o in raw["Contents"]] == ["root/x.jpg"]
