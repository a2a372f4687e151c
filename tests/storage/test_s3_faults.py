"""The S3 endpoint going away: a transient error, and a retry that gets past it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from storage import S3Store, TransientStorageError, make_s3_client
from testbed.services import MotoServer, TcpProxy
from tests.conftest import s3_options
from tests.support.s3_proxy import S3Proxy


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(s3_server.port)
    proxy.up()
    yield proxy
    proxy.down()


def _store(proxy: TcpProxy, bucket: str, attempts: int) -> S3Store:
    options = s3_options(proxy.url, max_attempts=attempts, connect_timeout=1.0, read_timeout=2.0)
    return S3Store(make_s3_client(options), bucket, "root")


def test_endpoint_down_is_transient_then_back_up_works(proxy: TcpProxy, bucket: str) -> None:
    store = _store(proxy, bucket, attempts=1)
    store.put("a.jpg", b"a")

    proxy.down()
    with pytest.raises(TransientStorageError, match="unreachable"):
        store.get("a.jpg")

    proxy.up()
    assert store.get("a.jpg").data == b"a"


def test_botocore_retries_get_past_a_short_outage(proxy: TcpProxy, bucket: str) -> None:
    store = _store(proxy, bucket, attempts=10)
    store.put("a.jpg", b"a")

    proxy.down()
    threading.Timer(1.0, proxy.up).start()  # back before the retries run out

    assert store.get("a.jpg").data == b"a"


def test_throttling_is_retried_by_the_client_and_reported(
    s3_server: MotoServer, bucket: str
) -> None:
    proxy = S3Proxy(s3_server.port, error_rate=0.3, seed=5)
    retries: list[tuple[str, int]] = []
    options = s3_options(proxy.url, max_attempts=8)
    store = S3Store(make_s3_client(options), bucket, "root", on_retry=lambda *r: retries.append(r))
    try:
        for i in range(15):
            store.put(f"k{i}", b"x")
        assert [store.get(f"k{i}").data for i in range(15)] == [b"x"] * 15
    finally:
        proxy.close()
    assert proxy.injected_errors > 0
    assert sum(n for _, n in retries) == proxy.injected_errors
    assert {op for op, _ in retries} <= {"put", "get"}
