"""Everything that crosses the queue, defined once: task and queue names, payloads, results,
and what a task body may ask of its process (:class:`Engines`).

Messages carry keys, never image bytes. Payloads are plain JSON objects so that any producer
(the dispatcher, the CLI, another language) can send them. This module is a leaf: the app and
the task bodies import it, never each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from storage import InvalidKey, PermanentError, validate_key

if TYPE_CHECKING:
    from monitoring.metrics import Metrics
    from workers.inference import BatchClassifier, Relabeler
    from workers.training import Retrainer

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
# Re-scoring after a promotion: the inference worker serves it only when `inference` is empty.
RELABEL_QUEUE = "relabel"
QUEUES = (INFERENCE_QUEUE, TRAINING_QUEUE, RELABEL_QUEUE)

CLASSIFY_BATCH = "labeler.classify_batch"
RETRAIN = "labeler.retrain"
CHECK_LABELS = "labeler.check_labels"  # label issues in training/, by the production model
RELABEL = "labeler.relabel"
# Each task's queue: the routes, the task decorators and the beat schedule all read this.
TASK_QUEUES = {
    CLASSIFY_BATCH: INFERENCE_QUEUE,
    RETRAIN: TRAINING_QUEUE,
    CHECK_LABELS: TRAINING_QUEUE,
    RELABEL: RELABEL_QUEUE,
}

MAX_KEYS_PER_BATCH = 4096
RELABEL_CHUNK = 32  # keys per relabel task: short, so an upload waits at most one of them
RelabelScope = Literal["pending", "all"]

P = TypeVar("P", bound=BaseModel)


class InvalidPayload(PermanentError, ValueError):
    """A task message that does not match its contract; retrying cannot fix it."""


class ClassifyBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_id: str = Field(min_length=1, max_length=128)
    keys: list[str] = Field(min_length=1, max_length=MAX_KEYS_PER_BATCH)
    model_version: int | None = Field(None, ge=1, description="Pin a version; default: production")

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: list[str]) -> list[str]:
        return _checked_keys(keys)


class BatchResult(BaseModel):
    batch_id: str
    labeled: int
    errored: int
    skipped: int
    model_version: int


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = "manual"


class RelabelRequest(BaseModel):
    """Re-score records with ``model_version``: the given ``keys``, or (without keys) every
    record in ``scope`` under ``prefix``, which the task splits into keyed tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_version: int = Field(ge=1)
    scope: RelabelScope = "pending"
    prefix: str = ""
    keys: list[str] | None = Field(None, min_length=1, max_length=MAX_KEYS_PER_BATCH)

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: list[str] | None) -> list[str] | None:
        return None if keys is None else _checked_keys(keys)


def _checked_keys(keys: list[str]) -> list[str]:
    for key in keys:
        try:
            validate_key(key)
        except InvalidKey as exc:
            raise ValueError(str(exc)) from None
    return keys


class Engines(Protocol):
    """What task bodies need from their process; built once per worker process."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def classifier(self) -> BatchClassifier: ...

    @property
    def retrainer(self) -> Retrainer: ...

    @property
    def relabeler(self) -> Relabeler: ...

    @property
    def redis(self) -> Any: ...

    @property
    def model_name(self) -> str: ...

    def warm_up(self) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class CeleryConfig:
    """The app's broker, limits and schedule; built from Settings by
    ``labeler.wiring.celery_config``."""

    broker_url: str
    result_backend: str
    # Redis re-delivers a reserved but unacknowledged message after this long: it must exceed the
    # longest task, or a slow task would run twice at once. Workers serving only the inference
    # queue use the second, shorter one (a batch takes seconds, a retrain up to hours).
    visibility_timeout: int
    inference_visibility_timeout: int
    inference_soft_time_limit: int
    inference_time_limit: int
    training_soft_time_limit: int
    training_time_limit: int
    # A batch that failed on a transient storage error waits 2, 4, 8... s, at most this long, so
    # an outage's backlog drains soon after storage is back.
    inference_retry_backoff_max: int
    retrain_cron: str  # UTC
    retrain_expires: int  # a scheduled run that waited this long is dropped
    relabel_on_promote: RelabelScope | Literal["off"]  # what to re-score after a promotion


class TaskApp(Protocol):
    """The app as task modules see it: where they register, their limits, their engines."""

    labeler_config: CeleryConfig

    def task(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any: ...

    def engines(self) -> Engines: ...


def parse_payload(model: type[P], payload: Any) -> P:
    """Validate ``payload`` or raise :class:`InvalidPayload` saying which fields are wrong."""
    if not isinstance(payload, dict):
        raise InvalidPayload(
            f"{model.__name__}: payload must be a JSON object, got {type(payload).__name__}"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidPayload(f"{model.__name__}: {problems}") from None
