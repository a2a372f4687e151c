"""Where things live. Every store area and key shape is defined here, once.

Each area is its own store root (``<storage_uri>/<area>`` by default), so keys inside an area are
relative: an image dropped at ``incoming/cats/1.jpg`` has key ``cats/1.jpg`` in the incoming store
and its result lives at ``cats/1.jpg.json`` in the labels store.
"""

from __future__ import annotations

from enum import StrEnum


class Area(StrEnum):
    INCOMING = "incoming"
    LABELS = "labels"
    TRAINING = "training"
    MODELS = "models"
    REPORTS = "reports"


LABEL_SUFFIX = ".json"
PRODUCTION_ALIAS = "production.json"
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
OPENVINO_DIR = "openvino"
ARTIFACTS_FILE = "manifest.json"  # written after the IR files it lists


def label_key(source_key: str) -> str:
    """``cats/1.jpg`` -> ``cats/1.jpg.json`` (in the labels store)."""
    return source_key + LABEL_SUFFIX


def source_key(label: str) -> str:
    """Inverse of :func:`label_key`."""
    if not label.endswith(LABEL_SUFFIX):
        raise ValueError(f"{label!r} is not a label key (no {LABEL_SUFFIX} suffix)")
    return label[: -len(LABEL_SUFFIX)]


def model_prefix(name: str) -> str:
    return f"{name}/"


def alias_key(name: str) -> str:
    return f"{name}/{PRODUCTION_ALIAS}"


def model_file_key(name: str, version: int) -> str:
    return f"{name}/{version}/{MODEL_FILE}"


def metadata_key(name: str, version: int) -> str:
    return f"{name}/{version}/{METADATA_FILE}"


def openvino_key(name: str, version: int, file: str) -> str:
    """``<name>/<version>/openvino/fp32/model.xml``, ``.../int8/model.bin``, ``.../manifest.json``
    (the IR files of each precision, and the manifest listing them)."""
    return f"{name}/{version}/{OPENVINO_DIR}/{file}"


def report_key(name: str, version: int, file: str) -> str:
    """``evaluation.json``, ``report.html`` or ``confusion_matrix.png`` of one version."""
    return f"{name}/{version}/{file}"
