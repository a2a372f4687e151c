"""What ``S3Store``'s GETs and PUTs through obstore promise beyond the shared contract (moto
server, some through the fault-injecting proxy): errors mapped as boto3's were, retries made as
botocore's standard mode makes them and every one reported, bodies of oversized objects left
unread, credentials from boto3's chain, and no hang after fork."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterator

import pytest

from storage import (
    AccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    PermanentStorageError,
    S3Store,
    TransientStorageError,
    WriteConflict,
    make_s3_client,
)
from storage.s3 import S3Client
from testbed.services import MotoServer
from tests.conftest import s3_options
from tests.support.s3_proxy import S3Proxy

Retries = list[tuple[str, int]]


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[S3Proxy]:
    proxy = S3Proxy(s3_server.port)
    yield proxy
    proxy.close()


def _store(url: str, bucket: str, retries: Retries, **options: object) -> S3Store:
    client = make_s3_client(s3_options(url, **options))
    return S3Store(client, bucket, "root", on_retry=lambda *r: retries.append(r))


@pytest.mark.parametrize("conditional", [{}, {"if_none_match": True}, {"if_match": "0" * 32}])
def test_a_missing_bucket_is_a_storage_error_not_a_missing_object(
    s3_client: S3Client, conditional: dict[str, object]
) -> None:
    store = S3Store(s3_client, "no-such-bucket-here")

    with pytest.raises(PermanentStorageError, match="NoSuchBucket") as got:
        store.get("a.jpg")
    assert not isinstance(got.value, ObjectNotFound)
    with pytest.raises(PermanentStorageError, match="NoSuchBucket") as put:
        store.put("a.json", b"{}", **conditional)  # type: ignore[arg-type]
    assert not isinstance(put.value, WriteConflict)


def test_conditional_writes_return_the_etag_the_object_has(s3_store: S3Store) -> None:
    created = s3_store.put("r.json", b"v1", content_type="application/json", if_none_match=True)
    updated = s3_store.put("r.json", b"v2", if_match=created.etag)

    assert s3_store.head("r.json").etag == updated.etag != created.etag
    assert s3_store.get("r.json").info.etag == updated.etag
    s3_store.delete("r.json")
    with pytest.raises(WriteConflict, match="deleted since it was read"):
        s3_store.put("r.json", b"v3", if_match=updated.etag)


def test_content_type_is_stored(s3_store: S3Store, s3_client: S3Client) -> None:
    s3_store.put("cat.png", b"png", content_type="image/png")
    head = s3_client.boto3.head_object(Bucket=s3_store.bucket, Key="root/cat.png")
    assert head["ContentType"] == "image/png"


def test_a_call_that_fails_every_try_reports_its_retries_and_a_short_error(
    s3_server: MotoServer, bucket: str
) -> None:
    proxy = S3Proxy(s3_server.port, error_rate=1.0)
    retries: Retries = []
    store = _store(proxy.url, bucket, retries, max_attempts=3)
    try:
        with pytest.raises(TransientStorageError) as got:
            store.get("a.jpg")
        with pytest.raises(TransientStorageError):
            store.put("a.jpg", b"a", if_none_match=True)
    finally:
        proxy.close()

    assert proxy.injected_errors == 6  # three tries each
    assert retries == [("get", 2), ("put", 2)]
    assert str(got.value) == "SlowDown for 'a.jpg': Please reduce your request rate."


def test_answers_are_never_retried(proxy: S3Proxy, bucket: str) -> None:
    retries: Retries = []
    store = _store(proxy.url, bucket, retries, max_attempts=5)
    first = store.put("a.json", b"1")

    with pytest.raises(WriteConflict):
        store.put("a.json", b"2", if_none_match=True)  # 412
    with pytest.raises(WriteConflict):
        store.put("a.json", b"2", if_match="0" * 32)  # 412
    with pytest.raises(WriteConflict):
        store.put("gone.json", b"2", if_match=first.etag)  # 404
    with pytest.raises(ObjectNotFound):
        store.get("nope.jpg")  # 404

    assert [e.status for e in proxy.exchanges] == [200, 412, 412, 404, 404]
    assert retries == []


def test_a_timeout_is_retried_then_transient(s3_server: MotoServer, bucket: str) -> None:
    proxy = S3Proxy(s3_server.port, slow_rate=1.0, slow_seconds=1.5)
    retries: Retries = []
    store = _store(proxy.url, bucket, retries, max_attempts=2, read_timeout=0.3)
    try:
        with pytest.raises(TransientStorageError, match=r"unreachable.*Timeout") as got:
            store.get("a.jpg")
    finally:
        proxy.close()
    assert retries == [("get", 1)]
    assert "Debug source" not in str(got.value)


def test_an_oversized_body_is_not_downloaded(proxy: S3Proxy, bucket: str) -> None:
    store = _store(proxy.url, bucket, [])
    size = 4 * 2**20
    store.put("big.bin", os.urandom(size))

    with pytest.raises(ObjectTooLarge, match=f"{size} bytes"):
        store.get("big.bin", max_bytes=size - 1)

    (get,) = proxy.gets_of("root/big.bin")
    assert get.body_bytes_sent < size // 4  # what the kernel buffered, not the object
    assert store.get("big.bin", max_bytes=size).info.size == size


def test_credentials_come_from_boto3s_chain(
    s3_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    store = _store(s3_server.endpoint_url, bucket, [], access_key_id=None, secret_access_key=None)

    store.put("a.json", b"{}")
    assert store.get("a.json").data == b"{}"


def test_no_credentials_anywhere_is_access_denied(
    s3_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = _store(s3_server.endpoint_url, bucket, [], access_key_id=None, secret_access_key=None)

    with pytest.raises(AccessDenied, match="no S3 credentials"):
        store.get("a.json")
    with pytest.raises(AccessDenied, match="no S3 credentials"):
        store.head("a.json")


def test_a_process_forked_after_obstore_ran_gets_an_error_not_a_hang(s3_store: S3Store) -> None:
    s3_store.put("a.json", b"{}")  # obstore's runtime now runs in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the call raised, then leave without cleanup
        try:
            s3_store.get("a.json")
            os.write(write, b"no error")
        except RuntimeError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    answered, _, _ = select.select([read], [], [], 30)
    if not answered:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode() if answered else "no answer in 30 s: it hung"
    assert "build S3 stores after fork" in said
