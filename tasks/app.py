"""The Celery application: JSON only, acks late, one message at a time, two queues.

The app knows nothing about settings or the environment: the composition root passes a
:class:`CeleryConfig` and a factory for the per-process engines (built after fork, because
TensorFlow is not fork-safe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, current_app
from celery.schedules import crontab
from celery.signals import task_retry, worker_process_init, worker_process_shutdown
from kombu import Queue

from monitoring.metrics import Metrics
from storage import TransientError, error_classes
from tasks.contracts import (
    INFERENCE_QUEUE,
    QUEUES,
    RELABEL_QUEUE,
    RETRAIN,
    TASK_QUEUES,
    CeleryConfig,
    Engines,
)
from tasks.inference import register_inference
from tasks.queues import own_reservations
from tasks.relabel import register_relabel
from tasks.training import register_training

PROCESS_START_TIMEOUT = 120.0  # seconds a new prefork child may take to build its engines

log = logging.getLogger(__name__)


class LabelerCelery(Celery):  # type: ignore[misc]
    """A Celery app that also owns this process's engines."""

    def __init__(self, config: CeleryConfig, engines_factory: Callable[[], Engines]) -> None:
        super().__init__("labeler", broker=config.broker_url, backend=config.result_backend)
        self.labeler_config = config
        self._engines_factory = engines_factory
        self._engines: Engines | None = None

    def engines(self) -> Engines:
        if self._engines is None:
            self._engines = self._engines_factory()
        return self._engines

    @property
    def built_engines(self) -> Engines | None:
        """This process's engines if they were built, without building them."""
        return self._engines


def create_app(
    config: CeleryConfig,
    engines_factory: Callable[[], Engines],
    queues: frozenset[str] = frozenset(),
) -> LabelerCelery:
    """Build the app for a producer (no ``queues``) or a worker serving ``queues``, and
    register every task."""
    app = LabelerCelery(config, engines_factory)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # a pickle message is refused, never deserialized
        result_accept_content=["json"],
        task_acks_late=True,  # ack after the work is done: a killed worker loses nothing
        task_reject_on_worker_lost=True,  # ...and its message goes back to the queue
        task_acks_on_failure_or_timeout=True,  # a failed task is not re-run forever
        worker_prefetch_multiplier=1,  # a batch is big: don't hoard messages other workers want
        # A replacement child (after a crash or a hard time limit) imports TensorFlow and loads
        # the model before it reports UP; with Celery's 4 s it is killed and replaced, in a loop.
        worker_proc_alive_timeout=PROCESS_START_TIMEOUT,
        broker_transport_options=_broker_transport_options(config, queues),
        result_backend_transport_options={"visibility_timeout": config.visibility_timeout},
        broker_connection_retry_on_startup=True,
        # Let a batch running when the broker connection drops finish: its labels are written
        # either way. Cancelling it (True) loses it when Redis restarts: marking the task
        # "retry" in the result backend (the same Redis) fails, so Celery records it REVOKED and
        # acknowledges its message once Redis is back. An ack that cannot be made leaves the
        # message to come back after the visibility timeout, and the re-run writes nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_queues=[Queue(name) for name in QUEUES],
        task_routes={task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        task_default_queue=INFERENCE_QUEUE,
        task_track_started=True,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    register_inference(app)
    register_training(app)
    register_relabel(app)
    app.conf.beat_schedule = {
        "nightly-retrain": {
            "task": RETRAIN,
            "schedule": crontab(*config.retrain_cron.split()),
            "kwargs": {"payload": {"reason": "schedule"}},
            "options": {"queue": TASK_QUEUES[RETRAIN], "expires": config.retrain_expires},
        }
    }

    return app


def _broker_transport_options(config: CeleryConfig, queues: frozenset[str]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "visibility_timeout": config.visibility_timeout,
        # kombu looks for messages past their visibility timeout every interval x throttle
        # seconds, 10 x 10 by default: sweep every 10 s instead, so a vanished worker's batch
        # comes back within visibility_timeout + 10 s, as documented.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    if INFERENCE_QUEUE in queues and queues <= {INFERENCE_QUEUE, RELABEL_QUEUE}:
        # A vanished batch worker's message comes back in minutes, not after a retrain's hours;
        # its own hash keeps the short timeout away from retrains reserved by other workers.
        options |= own_reservations(INFERENCE_QUEUE)
        options["visibility_timeout"] = config.inference_visibility_timeout
    if RELABEL_QUEUE in queues:
        # Queues are read in the order given (`labeler worker` puts relabel last), not in turn:
        # re-scoring runs only while no upload waits.
        options["queue_order_strategy"] = "priority"
    return options


def _start_task_metrics_at_zero(metrics: Metrics) -> None:
    """Export every task's bounded series from the start, so rates and alerts see 0, not gaps.

    The retry series are one per transient error class: the family is the one list of them.
    """
    for task in TASK_QUEUES:
        metrics.tasks_in_progress.labels(task)
        metrics.tasks_rejected.labels(task, "invalid_payload")
        for error in error_classes(TransientError):
            metrics.task_retries.labels(task, error.__name__)


# Worker process hooks, connected once per process (at import), for whichever app the worker
# runs: Celery makes it the current app.
def _worker_app() -> LabelerCelery | None:
    app = current_app._get_current_object()
    return app if isinstance(app, LabelerCelery) else None


@worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _build_engines(**_: Any) -> None:
    app = _worker_app()
    if app is None:
        return
    engines = app.engines()
    _start_task_metrics_at_zero(engines.metrics)
    engines.warm_up()


@worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
def _process_exiting(**_: Any) -> None:
    app = _worker_app()
    if app is not None and app.built_engines is not None:
        app.built_engines.shutdown()


@task_retry.connect(weak=False)  # type: ignore[untyped-decorator]
def _count_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    app = _worker_app()
    if app is None:
        return
    task = getattr(request, "task", "unknown")
    cause = getattr(reason, "exc", None) or reason  # Celery wraps the cause in a Retry
    error = type(cause).__name__ if isinstance(cause, BaseException) else "Retry"
    app.engines().metrics.task_retries.labels(task, error).inc()
