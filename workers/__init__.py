"""The work itself: decoding, batched inference, the model runtime, training, evaluation and
reports, and event dispatch. Nothing here knows Celery; TensorFlow is imported only when a model
is built or loaded (after fork)."""

from workers.batch import BatchClassifier, BatchOutcome, EngineLimits, make_record
from workers.decoding import ImageRejected, configure_pillow, decode_image
from workers.dispatch import Dispatcher
from workers.dispatch_config import DispatchConfig
from workers.errors import InvalidModel, ModelUnavailable
from workers.events import parse_event, s3_root
from workers.metered_store import MeteredStore
from workers.model_runtime import LoadedModel, ModelRuntime, load_keras_file, model_signature
from workers.retrain import RetrainConfig, Retrainer, RetrainOutcome

__all__ = [
    "BatchClassifier",
    "BatchOutcome",
    "DispatchConfig",
    "Dispatcher",
    "EngineLimits",
    "ImageRejected",
    "InvalidModel",
    "LoadedModel",
    "MeteredStore",
    "ModelRuntime",
    "ModelUnavailable",
    "RetrainConfig",
    "RetrainOutcome",
    "Retrainer",
    "configure_pillow",
    "decode_image",
    "load_keras_file",
    "make_record",
    "model_signature",
    "parse_event",
    "s3_root",
]
