"""The object-store fixture the behaviour contract runs against here: a real moto S3 endpoint
(``tests/unit/storage/conftest.py`` gives the same tests a directory and the in-memory store)."""

from __future__ import annotations

import pytest

from storage import ObjectStore


@pytest.fixture(params=["s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    s3: ObjectStore = request.getfixturevalue("s3_store")
    return s3
