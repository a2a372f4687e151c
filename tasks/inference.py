"""``classify_batch``: validate the payload, run the batch engine, return the counts."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage import TransientError
from tasks.contracts import (
    CLASSIFY_BATCH,
    BatchResult,
    ClassifyBatchRequest,
    InvalidPayload,
    TaskApp,
    parse_payload,
)

log = logging.getLogger(__name__)

# Retried, not failed: storage that is down, and Redis (the review index, the audit counts) that
# is down or restarting mid-batch. A failed batch is acknowledged and gone for good.
RETRIED = (TransientError, RedisConnectionError, RedisTimeoutError)


def register_inference(app: TaskApp) -> None:
    config = app.labeler_config

    @app.task(
        name=CLASSIFY_BATCH,
        shared=False,  # this app's task only: Celery adds shared tasks to every later app
        # Transient: storage hiccups and "no model yet". A bad image is a record, not an error,
        # and a bad payload can never succeed: neither is retried.
        autoretry_for=RETRIED,
        retry_backoff=2,
        retry_backoff_max=config.inference_retry_backoff_max,
        retry_jitter=True,
        # Never given up: a batch failed for a transient reason would be forgotten with no
        # record for its images. It waits out an outage or a missing model, however long.
        max_retries=None,
        soft_time_limit=config.inference_soft_time_limit,
        time_limit=config.inference_time_limit,
        # No STARTED write before the body: when Redis drops at that moment the write fails
        # outside the body, the task counts as failed and its message is acknowledged once Redis
        # is back, so the batch is lost. Without it, the first write is the result, after the
        # labels are written. (Retrains keep STARTED: `retrain --wait` shows it.)
        track_started=False,
    )
    def classify_batch(payload: Any) -> dict[str, Any]:
        engines = app.engines()
        metrics = engines.metrics
        try:
            request = parse_payload(ClassifyBatchRequest, payload)
        except InvalidPayload as exc:
            metrics.tasks_rejected.labels(CLASSIFY_BATCH, "invalid_payload").inc()
            log.error("rejected %s message, not retried: %s", CLASSIFY_BATCH, exc)
            raise
        started = time.perf_counter()
        with metrics.tasks_in_progress.labels(CLASSIFY_BATCH).track_inprogress():
            try:
                outcome = engines.classifier.classify(
                    request.keys, batch_id=request.batch_id, model_version=request.model_version
                )
            except RETRIED:
                metrics.batches.labels("retry").inc()
                raise
            except Exception:
                metrics.batches.labels("failed").inc()
                raise
        metrics.batches.labels("ok").inc()
        metrics.batch_size.observe(len(request.keys))
        metrics.batch_seconds.observe(time.perf_counter() - started)
        metrics.last_batch_success.set_to_current_time()
        return BatchResult(batch_id=request.batch_id, **vars(outcome)).model_dump()
