"""The model registry over an in-memory store: numbering, promotion, rollback, history."""

from __future__ import annotations

import pytest

from storage.registry import ModelMetadata, ModelRegistry, VersionNotFound
from tests.support.memory_store import MemoryStore


def metadata() -> ModelMetadata:
    return ModelMetadata(name="ignored", version=99, class_names=["a", "b"], input_size=(8, 8))


def test_versions_are_numbered_after_the_newest_and_keep_the_registry_name() -> None:
    registry = ModelRegistry(MemoryStore(), "cats")
    first = registry.register(b"one", metadata())
    second = registry.register(b"two", metadata())
    assert (first.version, second.version) == (1, 2)
    assert first.name == "cats"
    assert registry.versions() == [1, 2]
    assert registry.model_bytes(2) == b"two"
    assert registry.metadata(1).version == 1


def test_a_version_without_metadata_is_not_a_version() -> None:
    store = MemoryStore()
    registry = ModelRegistry(store, "cats")
    registry.register(b"one", metadata())
    store.put("cats/2/model.keras", b"half-written")  # its metadata never came
    assert registry.versions() == [1]
    assert registry.register(b"next", metadata()).version == 2


def test_promote_and_rollback_move_only_the_alias() -> None:
    registry = ModelRegistry(MemoryStore(), "cats")
    for data in (b"1", b"2", b"3"):
        registry.register(data, metadata())
    assert registry.production() is None
    with pytest.raises(VersionNotFound):
        registry.promote(7)
    with pytest.raises(VersionNotFound, match="no production version"):
        registry.rollback()

    registry.promote(1)
    registry.promote(3)
    alias = registry.promote(2)
    assert (alias.version, alias.history) == (2, [1, 3])
    assert registry.rollback().version == 3
    assert registry.rollback(to=1).version == 1
    assert registry.versions() == [1, 2, 3]  # nothing deleted


def test_history_is_bounded() -> None:
    registry = ModelRegistry(MemoryStore(), "cats")
    registry.register(b"1", metadata())
    registry.register(b"2", metadata())
    for n in range(60):
        registry.promote(1 + n % 2)
    production = registry.production()
    assert production is not None
    assert len(production.history) == 50


def test_model_names_are_checked() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        ModelRegistry(MemoryStore(), "../etc")
