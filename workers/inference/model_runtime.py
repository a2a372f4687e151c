"""The model a worker process serves: loaded once after fork, warmed up, hot-swapped.

TensorFlow is not fork-safe, so nothing here runs at import time: the composition root builds a
:class:`ModelRuntime` in each worker process after it starts. Two runtimes behind one interface:
TensorFlow (one ``tf.function`` with a fixed input signature) and OpenVINO (the version's IR,
compiled for a fixed batch). Either way the last partial batch is padded, so nothing retraces.
"""

from __future__ import annotations

import glob
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from storage import ObjectNotFound, StorageError
from storage.registry import Int8Approval, ModelMetadata, ModelRegistry
from workers.inference.errors import InvalidModel, ModelUnavailable
from workers.inference.padding import predict_padded

log = logging.getLogger(__name__)

_devices_configured = False

RUNTIMES = ("auto", "tensorflow", "openvino")
SERVING_FORMATS = ("auto", "fp32", "int8")  # numeric formats OpenVINO can serve
# On Linux TensorFlow reaches a GPU only through these device nodes (NVIDIA CUDA, AMD ROCm,
# WSL2): where none exists it lists no GPU, so `auto` can tell without importing it.
_GPU_DEVICE_NODES = ("/dev/nvidia*", "/dev/kfd", "/dev/dxg")


def configure_devices() -> None:
    """Once per process, before the first TensorFlow model: let GPU memory grow instead of
    grabbing it all."""
    global _devices_configured
    if _devices_configured:
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    _devices_configured = True


def load_keras_file(path: Path) -> Any:
    """Load a ``.keras`` file in safe mode: a Lambda layer or other pickled code is refused."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for bad files
        raise InvalidModel(f"cannot load {path.name} safely: {exc}") from exc


def model_signature(model: Any) -> tuple[tuple[int, int], int]:
    """``((height, width), num_classes)`` of an image classifier, or ``InvalidModel``."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise InvalidModel(f"model input must be (batch, height, width, 3), got {shape}")
    out = tuple(model.output_shape)
    if len(out) != 2 or not out[1]:
        raise InvalidModel(f"model output must be (batch, classes), got {out}")
    return (int(shape[1]), int(shape[2])), int(out[1])


class LoadedModel(Protocol):
    """One version, ready to predict on uint8 RGB batches, whatever runtime computes it."""

    metadata: ModelMetadata
    batch_size: int
    runtime: str
    serving_format: str  # fp32 or int8

    @property
    def version(self) -> int: ...

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]: ...


def _gpu_possible() -> bool:
    """Whether TensorFlow could see a GPU here; False only where it certainly cannot."""
    if sys.platform != "linux":
        return True  # a Metal or DirectML GPU has no device node to look for: ask TensorFlow
    return any(glob.glob(pattern) for pattern in _GPU_DEVICE_NODES)


def resolve_runtime(runtime: str) -> str:
    """``auto``: TensorFlow where a GPU is visible (or OpenVINO is not installed), else OpenVINO.

    TensorFlow is asked only where a GPU could exist: importing it costs a CPU worker that
    serves OpenVINO ~0.7 GB and seconds of start-up for nothing.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime != "auto":
        return runtime
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "tensorflow"
    if _gpu_possible():
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "tensorflow"
    return "openvino"


class KerasModel:
    """One version served by TensorFlow."""

    runtime = "tensorflow"
    serving_format = "fp32"

    def __init__(self, model: Any, metadata: ModelMetadata, batch_size: int) -> None:
        import tensorflow as tf

        size, classes = model_signature(model)
        if size != tuple(metadata.input_size) or classes != len(metadata.class_names):
            raise InvalidModel(
                f"model {metadata.name} v{metadata.version}: file says input {size} and "
                f"{classes} classes, metadata says {metadata.input_size} and "
                f"{len(metadata.class_names)}"
            )
        self.metadata = metadata
        self.batch_size = batch_size
        height, width = size
        spec = tf.TensorSpec([batch_size, height, width, 3], tf.uint8)

        @tf.function(input_signature=[spec], reduce_retracing=False)  # type: ignore[untyped-decorator]
        def serve(images: Any) -> Any:
            return model(tf.cast(images, tf.float32), training=False)

        self._model = model
        self._serve = serve
        # Warm-up: trace and allocate before the first real batch.
        self.predict(np.zeros((1, height, width, 3), np.uint8))

    @property
    def version(self) -> int:
        return self.metadata.version

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Class probabilities for ``images`` (n, h, w, 3); any n, run in fixed-size calls."""
        classes = len(self.metadata.class_names)
        return predict_padded(self._serve, images, self.batch_size, classes)


class ModelRuntime:
    """Serves the registry's production version; swaps between batches when the alias moves."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        batch_size: int,
        reload_seconds: float = 5.0,
        on_load: Callable[[LoadedModel, Int8Approval | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        runtime: str = "tensorflow",
        serving_format: str = "auto",
    ) -> None:
        if serving_format not in SERVING_FORMATS:
            raise ValueError(
                f"serving_format must be one of {SERVING_FORMATS}, got {serving_format!r}"
            )
        self.registry = registry
        self.runtime = runtime
        self.serving_format = serving_format
        self._resolved: str | None = None
        self.batch_size = batch_size
        self.reload_seconds = reload_seconds
        self._on_load = on_load
        self._clock = clock
        self._current: LoadedModel | None = None
        self._pinned: LoadedModel | None = None
        self._checked_at = -float("inf")
        self._refused: set[int] = set()
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The production model, checking the alias at most every ``reload_seconds``."""
        with self._lock:
            now = self._clock()
            if self._current is not None and now - self._checked_at < self.reload_seconds:
                return self._current
            try:
                alias = self.registry.production()
            except StorageError as exc:
                if self._current is None:
                    raise ModelUnavailable(f"cannot read the production alias: {exc}") from exc
                log.warning("keeping model v%s: alias unreadable: %s", self._current.version, exc)
                return self._current
            self._checked_at = now
            if alias is None:
                raise ModelUnavailable(
                    f"model {self.registry.name!r} has no production version yet: import one "
                    "with `labeler models import` or run `labeler retrain`"
                )
            if self._current is not None and self._current.version == alias.version:
                return self._current
            return self._switch_to(alias.version)

    def _switch_to(self, version: int) -> LoadedModel:
        """Load the promoted ``version``; a refused one is never retried (versions are
        immutable): keep serving the last good model, or wait for a servable promotion."""
        if version not in self._refused:
            try:
                self._current = self._load(version)
                return self._current
            except InvalidModel as exc:
                self._refused.add(version)
                log.error("refusing model %s v%s: %s", self.registry.name, version, exc)
        if self._current is None:
            raise ModelUnavailable(
                f"production model v{version} cannot be served safely; promote another version"
            )
        log.warning(
            "production is v%s, which was refused: still serving v%s",
            version,
            self._current.version,
        )
        return self._current

    def version(self, version: int) -> LoadedModel:
        """A pinned version (kept loaded until another is pinned)."""
        current = self.current()
        if current.version == version:
            return current
        with self._lock:
            if self._pinned is None or self._pinned.version != version:
                self._pinned = self._load(version)
            return self._pinned

    def _load(self, version: int) -> LoadedModel:
        started = time.perf_counter()
        try:
            metadata = self.registry.metadata(version)
            if self._resolved is None:
                self._resolved = resolve_runtime(self.runtime)
            model, approval = (
                self._load_openvino(metadata) if self._resolved == "openvino" else (None, None)
            )
            if model is None:
                model = self._load_keras(metadata)
        except StorageError as exc:
            raise ModelUnavailable(f"cannot read model v{version}: {exc}") from exc
        log.info(
            "loaded model %s v%s (%s %s) in %.1fs",
            metadata.name,
            version,
            model.runtime,
            model.serving_format,
            time.perf_counter() - started,
        )
        if self._on_load is not None:
            self._on_load(model, approval)
        return model

    def _load_keras(self, metadata: ModelMetadata) -> LoadedModel:
        configure_devices()  # only here: a process serving OpenVINO never imports TensorFlow
        data = self.registry.model_bytes(metadata.version)
        with tempfile.TemporaryDirectory(prefix="labeler-model-") as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(data)
            # InvalidModel (unsafe or malformed) propagates: the caller decides what to serve.
            return KerasModel(load_keras_file(path), metadata, self.batch_size)

    def _load_openvino(
        self, metadata: ModelMetadata
    ) -> tuple[LoadedModel | None, Int8Approval | None]:
        """The version's IR (INT8 where approved and wanted), or None: serve it with TensorFlow."""
        from workers.inference.openvino_runtime import OpenVinoModel, read_ir

        name, version = metadata.name, metadata.version
        try:
            artifacts = self.registry.artifacts(version)
        except ValueError as exc:  # a manifest that does not validate: a broken version
            raise InvalidModel(f"OpenVINO manifest unreadable: {str(exc)[:300]}") from exc
        if artifacts is None:
            hint = f"`labeler models optimize {name} {version}`"
            log.warning(
                "model %s v%s has no OpenVINO artifacts: serving it with TensorFlow "
                "until %s makes them",
                name,
                version,
                hint,
            )
            return None, None
        fmt = "fp32"
        if self.serving_format in ("auto", "int8") and artifacts.servable("int8"):
            fmt = "int8"
        elif self.serving_format == "int8":
            reason = artifacts.int8.reason if artifacts.int8 else "no INT8 artifact"
            log.warning("model %s v%s: INT8 not approved (%s): serving FP32", name, version, reason)
        try:
            xml, weights = self.registry.ir_bytes(version, fmt)
        except ObjectNotFound as exc:  # listed in the manifest but gone: a broken version
            raise InvalidModel(f"OpenVINO {fmt} artifact missing: {exc}") from exc
        model = OpenVinoModel(read_ir(xml, weights), metadata, self.batch_size, fmt)
        return model, artifacts.int8
