"""The object-store fixture the behaviour contracts run against: both real backends (a moto S3
endpoint and a directory) and the unit tier's in-memory store, so that fake behaves like them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import LocalStore, ObjectStore
from tests.support.memory_store import MemoryStore


@pytest.fixture(params=["local", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    elif request.param == "memory":
        yield MemoryStore()
    else:
        yield request.getfixturevalue("s3_store")
