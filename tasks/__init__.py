"""The Celery layer: the app, queues, task contracts and thin task bodies."""

from tasks.app import LabelerCelery, create_app
from tasks.contracts import (
    CLASSIFY_BATCH,
    INFERENCE_QUEUE,
    QUEUES,
    RELABEL,
    RELABEL_QUEUE,
    RETRAIN,
    TRAINING_QUEUE,
    BatchResult,
    CeleryConfig,
    ClassifyBatchRequest,
    InvalidPayload,
    RelabelRequest,
    RetrainRequest,
    parse_payload,
)
from tasks.queues import queue_depths, waiting_images

__all__ = [
    "CLASSIFY_BATCH",
    "INFERENCE_QUEUE",
    "QUEUES",
    "RELABEL",
    "RELABEL_QUEUE",
    "RETRAIN",
    "TRAINING_QUEUE",
    "BatchResult",
    "CeleryConfig",
    "ClassifyBatchRequest",
    "InvalidPayload",
    "LabelerCelery",
    "RelabelRequest",
    "RetrainRequest",
    "create_app",
    "parse_payload",
    "queue_depths",
    "waiting_images",
]
