"""The Celery layer: the app, queues, task contracts and thin task bodies."""

from tasks.app import (
    INFERENCE_QUEUE,
    QUEUES,
    TRAINING_QUEUE,
    CeleryConfig,
    LabelerCelery,
    create_app,
)
from tasks.contracts import (
    CLASSIFY_BATCH,
    BatchResult,
    ClassifyBatchRequest,
    InvalidPayload,
    parse_payload,
)
from tasks.queues import queue_depths, waiting_images
from tasks.training import RETRAIN, RetrainRequest

__all__ = [
    "CLASSIFY_BATCH",
    "INFERENCE_QUEUE",
    "QUEUES",
    "RETRAIN",
    "TRAINING_QUEUE",
    "BatchResult",
    "CeleryConfig",
    "ClassifyBatchRequest",
    "InvalidPayload",
    "LabelerCelery",
    "RetrainRequest",
    "create_app",
    "parse_payload",
    "queue_depths",
    "waiting_images",
]
