"""Session-wide real services: a private Redis and a moto S3 server, each on a free port.

The services themselves are plain classes in ``testbed/`` (the benchmarks use them too); this
file makes fixtures of them, and turns a missing binary into a skip, or a failure under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from labeler.sample_data import Sample
from storage import S3Options, S3Store, make_s3_client
from storage.s3 import S3Client
from testbed.processes import TEST_CREDENTIALS
from testbed.services import MissingBinary, MotoServer, RedisServer, remove_bucket

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The store contract's tests live in a support module that two test modules import: rewrite
# its asserts as pytest does a test module's.
pytest.register_assert_rewrite("tests.support.store_contract", "tests.support.store_conditional")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A service whose program is not installed skips its test here, but fails it under CI."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingBinary) and not IN_CI:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
    return report


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


def s3_options(endpoint_url: str, **overrides: object) -> S3Options:
    values: dict[str, object] = {"endpoint_url": endpoint_url, **TEST_CREDENTIALS}
    values.update(overrides)
    return S3Options(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def s3_client(s3_server: MotoServer) -> S3Client:
    return make_s3_client(s3_options(s3_server.endpoint_url))


@pytest.fixture
def bucket(s3_client: S3Client) -> Iterator[str]:
    """A fresh bucket per test, emptied and removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.boto3.create_bucket(Bucket=name)
    yield name
    remove_bucket(s3_client.boto3, name)


@pytest.fixture
def s3_store(s3_client: S3Client, bucket: str) -> S3Store:
    return S3Store(s3_client, bucket, "root")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsFixture:
    """A digits CNN trained in this session, saved as .keras, and 300 held-out digit PNGs."""
    from testbed.digits import split_digits, train_digits_model

    train, held_out = split_digits()
    path = train_digits_model(tmp_path_factory.mktemp("model") / "digits.keras", train)
    return DigitsFixture(path, held_out)


@dataclass(frozen=True)
class DigitsFixture:
    model_path: Path
    held_out: list[Sample]
