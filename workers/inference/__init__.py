"""Batched inference: safe decoding, the batch engine and the model runtimes (TensorFlow,
OpenVINO).
"""

from workers.inference.batch import BatchClassifier, BatchOutcome, EngineLimits, make_record
from workers.inference.decoding import (
    ALLOWED_FORMATS,
    ImageRejected,
    configure_pillow,
    decode_image,
)
from workers.inference.errors import InvalidModel, ModelUnavailable
from workers.inference.model_runtime import (
    LoadedModel,
    ModelRuntime,
    load_keras_file,
    model_signature,
)
from workers.inference.openvino_runtime import (
    OpenVinoModel,
    check_export,
    export_ir,
    ir_files,
    quantize_int8,
    read_ir,
)
from workers.inference.relabel import RELABEL_OUTCOMES, Relabeler, RelabelOutcome, relabel_keys

__all__ = [
    "ALLOWED_FORMATS",
    "RELABEL_OUTCOMES",
    "BatchClassifier",
    "BatchOutcome",
    "EngineLimits",
    "ImageRejected",
    "InvalidModel",
    "LoadedModel",
    "ModelRuntime",
    "ModelUnavailable",
    "OpenVinoModel",
    "RelabelOutcome",
    "Relabeler",
    "check_export",
    "configure_pillow",
    "decode_image",
    "export_ir",
    "ir_files",
    "load_keras_file",
    "make_record",
    "model_signature",
    "quantize_int8",
    "read_ir",
    "relabel_keys",
]
