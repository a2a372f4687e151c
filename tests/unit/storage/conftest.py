"""The object-store fixture the behaviour contract runs against in the unit tier: a directory
and the in-memory store (``tests/storage/conftest.py`` gives the same tests a real S3 endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import LocalStore, ObjectStore
from tests.support.memory_store import MemoryStore


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return MemoryStore()
