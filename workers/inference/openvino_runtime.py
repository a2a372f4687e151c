"""OpenVINO on CPUs: a Keras model exported to IR, quantized to INT8, compiled and served.

The IR is made once, when a version is registered; workers only read and compile it. It takes
the same uint8 RGB batches as the TensorFlow path (the cast to float is inside the graph, the
rescaling inside the model), so the two runtimes cannot drift in preprocessing.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storage.registry import ModelMetadata
from workers.inference.errors import InvalidModel
from workers.inference.padding import predict_padded

# The CPU plugin runs an FP32 IR in bfloat16 where the CPU has it (max error 3e-4 measured on
# the digits model); an FP32 artifact must compute in FP32 to match TensorFlow within 1e-4.
_FP32_HINT = {"INFERENCE_PRECISION_HINT": "f32"}
# A freshly exported IR must match Keras this closely on the same images, or it is not stored.
EXPORT_TOLERANCE = 1e-4


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def export_ir(model: Any) -> Any:
    """The Keras ``model`` as an OpenVINO model taking uint8 ``(batch, h, w, 3)``."""
    import openvino as ov
    import tensorflow as tf

    _, height, width, channels = model.input_shape
    spec = tf.TensorSpec([None, height, width, channels], tf.uint8)

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def serve(images: Any) -> Any:
        return model(tf.cast(images, tf.float32), training=False)

    return ov.convert_model(serve)


def check_export(model: Any, ir: Any, images: npt.NDArray[np.uint8]) -> float:
    """Largest probability difference between Keras and the IR on ``images``; ``InvalidModel``
    when it exceeds :data:`EXPORT_TOLERANCE` or any top-1 differs."""
    expected = np.asarray(model(images.astype(np.float32), training=False))
    compiled = _core().compile_model(ir, "CPU", _FP32_HINT)
    got = np.asarray(compiled(images)[0])
    diff = float(np.abs(got - expected).max())
    if diff > EXPORT_TOLERANCE or (got.argmax(1) != expected.argmax(1)).any():
        raise InvalidModel(f"OpenVINO export differs from Keras by {diff:.2e} (allowed 1e-4)")
    return diff


def quantize_int8(ir: Any, calibration: npt.NDArray[np.uint8]) -> Any:
    """Post-training INT8 quantization of ``ir`` with NNCF, calibrated on ``calibration``."""
    import nncf

    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    return nncf.quantize(ir, dataset, subset_size=len(calibration))


def ir_files(ir: Any) -> tuple[bytes, bytes]:
    """``(model.xml, model.bin)`` of an OpenVINO model, weights kept in full precision."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="labeler-ir-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ir, xml, compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def read_ir(xml: bytes, weights: bytes) -> Any:
    """An OpenVINO model from IR bytes; ``InvalidModel`` when they do not parse."""
    import openvino as ov

    try:
        tensor = ov.Tensor(np.frombuffer(weights, np.uint8).copy())
        return _core().read_model(model=xml, weights=tensor)
    except Exception as exc:  # OpenVINO raises RuntimeError for any malformed IR
        raise InvalidModel(f"cannot read the OpenVINO IR: {str(exc)[:300]}") from exc


class OpenVinoModel:
    """One version compiled for the CPU, ready to predict on uint8 RGB batches.

    Same contract as the TensorFlow model: fixed batch shape, the last batch padded, warmed up.
    """

    runtime = "openvino"

    def __init__(
        self, ir: Any, metadata: ModelMetadata, batch_size: int, serving_format: str
    ) -> None:
        height, width = metadata.input_size
        shape, out = list(ir.inputs[0].get_partial_shape()), list(ir.outputs[0].get_partial_shape())
        if len(shape) != 4 or [d.get_length() for d in shape[1:]] != [height, width, 3]:
            raise InvalidModel(f"IR input must be (batch, {height}, {width}, 3), got {shape}")
        if len(out) != 2 or out[1].get_length() != len(metadata.class_names):
            raise InvalidModel(f"IR output must be (batch, {len(metadata.class_names)}), got {out}")
        self.metadata = metadata
        self.batch_size = batch_size
        self.serving_format = serving_format
        try:
            ir.reshape([batch_size, height, width, 3])
            self._compiled = _core().compile_model(ir, "CPU", _FP32_HINT)
        except Exception as exc:  # a graph the CPU plugin cannot compile is a broken version
            raise InvalidModel(f"cannot compile the OpenVINO IR: {str(exc)[:300]}") from exc
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one batch at a time
        # Warm-up: allocate before the first real batch.
        self.predict(np.zeros((1, height, width, 3), np.uint8))

    @property
    def version(self) -> int:
        return self.metadata.version

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Class probabilities for ``images`` (n, h, w, 3); any n, run in fixed-size calls."""
        classes = len(self.metadata.class_names)
        with self._lock:
            return predict_padded(self._infer, images, self.batch_size, classes)

    def _infer(self, batch: npt.NDArray[np.uint8]) -> Any:
        return self._request.infer([batch])[0]
