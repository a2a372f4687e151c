"""``retrain``: one run at a time (a Redis lock that expires if its holder dies)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import LockError

from storage import TransientError
from tasks.contracts import CHECK_LABELS, RETRAIN, RetrainRequest, TaskApp, parse_payload
from tasks.relabel import request_relabel

log = logging.getLogger(__name__)


def register_training(app: TaskApp) -> None:
    config = app.labeler_config

    # Both tasks of the training queue: its time limits, retried on transient errors only.
    options: dict[str, Any] = {
        "shared": False,  # this app's task only: Celery adds shared tasks to every later app
        "bind": True,
        "autoretry_for": (TransientError,),
        "retry_backoff": 30,
        "retry_jitter": True,
        "max_retries": 3,
        "soft_time_limit": config.training_soft_time_limit,
        "time_limit": config.training_time_limit,
    }

    @app.task(name=RETRAIN, **options)
    def retrain(self: Any, payload: Any = None) -> dict[str, Any]:
        request = parse_payload(RetrainRequest, payload if payload is not None else {})
        engines = app.engines()
        metrics = engines.metrics
        lock = engines.redis.lock(
            f"labeler:retrain-lock:{engines.model_name}",
            timeout=config.training_time_limit + 60,  # a crashed holder frees it by expiry
        )
        if not lock.acquire(blocking=False):
            metrics.retrains.labels("skipped_locked").inc()
            log.warning("retrain (%s) skipped: another retrain holds the lock", request.reason)
            return {"outcome": "skipped_locked"}
        try:
            with metrics.retrain_seconds.time():
                outcome = engines.retrainer.run(
                    progress=lambda meta: self.update_state(state="PROGRESS", meta=meta)
                )
        except Exception:
            metrics.retrains.labels("failed").inc()
            raise
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("retrain lock had already expired")
        metrics.retrains.labels("promoted" if outcome.promoted else "refused").inc()
        metrics.last_retrain_success.set_to_current_time()
        if outcome.promoted and config.relabel_on_promote != "off":
            try:
                request_relabel(app, outcome.version, config.relabel_on_promote)
            except Exception:  # the promotion stands; `labeler relabel` can catch up
                log.exception("v%d promoted, but its relabel could not be queued", outcome.version)
        return {"outcome": "promoted" if outcome.promoted else "refused", **outcome.as_dict()}

    @app.task(name=CHECK_LABELS, **options)
    def check_labels(self: Any, payload: Any = None) -> dict[str, Any]:
        parse_payload(RetrainRequest, payload if payload is not None else {})
        engines = app.engines()
        return engines.retrainer.check_labels(
            progress=lambda meta: self.update_state(state="PROGRESS", meta=meta)
        )
