"""ModelRuntime with real (tiny) Keras models over an in-memory registry and a clock the test
moves: the alias is re-read only when due, a promotion is served after the next check, a
version that cannot be served is refused once and never retried."""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from storage.registry import ModelMetadata, ModelRegistry
from tests.support.memory_store import MemoryStore
from workers.inference import ModelRuntime, ModelUnavailable, model_runtime
from workers.inference.model_runtime import resolve_runtime

SIZE = (8, 8)


def tiny_model_bytes(seed: int) -> bytes:
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((*SIZE, 3)),
            layers.Rescaling(1 / 255),
            layers.Flatten(),
            layers.Dense(2, activation="softmax"),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model_files() -> list[bytes]:
    return [tiny_model_bytes(1), tiny_model_bytes(2)]


def register(registry: ModelRegistry, data: bytes) -> int:
    metadata = ModelMetadata(name="m", version=1, class_names=["a", "b"], input_size=SIZE)
    return registry.register(data, metadata).version


def model_reads(store: MemoryStore) -> int:
    return sum(key.endswith("model.keras") for key in store.keys_read)


def test_hot_swap_waits_for_the_next_alias_check(model_files: list[bytes]) -> None:
    store, clock, loaded = MemoryStore(), Clock(), []
    registry = ModelRegistry(store, "m")
    runtime = ModelRuntime(
        registry,
        batch_size=4,
        reload_seconds=5,
        clock=clock,
        on_load=lambda model, _int8: loaded.append(model),
    )
    with pytest.raises(ModelUnavailable, match="no production version"):
        runtime.current()

    registry.promote(register(registry, model_files[0]))
    clock.now += 5
    first = runtime.current()
    assert first.version == 1
    assert first.predict(np.zeros((6, *SIZE, 3), np.uint8)).shape == (6, 2)

    registry.promote(register(registry, model_files[1]))
    clock.now += 4.9
    assert runtime.current() is first  # not due yet: the alias is not even read
    clock.now += 0.2
    assert runtime.current().version == 2
    assert [m.version for m in loaded] == [1, 2]


def test_a_broken_version_is_refused_once_and_the_last_good_one_stays(
    model_files: list[bytes],
) -> None:
    store, clock = MemoryStore(), Clock()
    registry = ModelRegistry(store, "m")
    registry.promote(register(registry, model_files[0]))
    runtime = ModelRuntime(registry, batch_size=4, reload_seconds=5, clock=clock)
    assert runtime.current().version == 1

    registry.promote(register(registry, b"not a keras file"))
    clock.now += 10
    assert runtime.current().version == 1
    reads = model_reads(store)
    clock.now += 10
    assert runtime.current().version == 1
    assert model_reads(store) == reads  # versions are immutable: never fetched again

    fresh = ModelRuntime(registry, batch_size=4, reload_seconds=5, clock=clock)
    with pytest.raises(ModelUnavailable, match="cannot be served safely"):
        fresh.current()


def test_a_pinned_version_is_served_beside_production(model_files: list[bytes]) -> None:
    registry = ModelRegistry(MemoryStore(), "m")
    register(registry, model_files[0])
    registry.promote(register(registry, model_files[1]))
    runtime = ModelRuntime(registry, batch_size=4, clock=Clock())

    assert runtime.current().version == 2
    assert runtime.version(1).version == 1
    assert runtime.current().version == 2


# --- `auto`: which runtime, and TensorFlow imported only where a GPU could be ---------------


def _fake_tensorflow(gpus: list[str]) -> types.ModuleType:
    tf = types.ModuleType("tensorflow")
    tf.config = types.SimpleNamespace(list_physical_devices=lambda kind: gpus)  # type: ignore[attr-defined]
    return tf


@pytest.fixture
def openvino_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", types.ModuleType("openvino"))


def test_auto_without_gpu_device_nodes_never_imports_tensorflow(
    monkeypatch: pytest.MonkeyPatch, openvino_installed: None, tmp_path: Path
) -> None:
    monkeypatch.setattr(model_runtime, "_GPU_DEVICE_NODES", (str(tmp_path / "nvidia*"),))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any `import tensorflow` would raise

    assert resolve_runtime("auto") == "openvino"


@pytest.mark.parametrize(("gpus", "expected"), [(["GPU:0"], "tensorflow"), ([], "openvino")])
def test_auto_with_a_gpu_device_node_asks_tensorflow(
    monkeypatch: pytest.MonkeyPatch,
    openvino_installed: None,
    tmp_path: Path,
    gpus: list[str],
    expected: str,
) -> None:
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(model_runtime, "_GPU_DEVICE_NODES", (str(tmp_path / "nvidia*"),))
    monkeypatch.setitem(sys.modules, "tensorflow", _fake_tensorflow(gpus))

    assert resolve_runtime("auto") == expected


def test_auto_without_openvino_is_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)

    assert resolve_runtime("auto") == "tensorflow"
