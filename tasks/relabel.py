"""``relabel``: re-score records with a newly promoted version, on the low-priority queue.

A request without keys is a plan: it lists what to re-score (the review queue's keys, or every
record) and sends keyed tasks of :data:`RELABEL_CHUNK` keys, so the inference worker, which
serves ``relabel`` only when ``inference`` is empty, never holds an upload back for long.
"""

from __future__ import annotations

import logging
from typing import Any

from storage import TransientError
from tasks.contracts import (
    RELABEL,
    RELABEL_CHUNK,
    RELABEL_QUEUE,
    InvalidPayload,
    RelabelRequest,
    RelabelScope,
    TaskApp,
    parse_payload,
)

log = logging.getLogger(__name__)


def request_relabel(app: Any, model_version: int, scope: RelabelScope, prefix: str = "") -> Any:
    """Queue the plan task that re-scores ``scope`` with ``model_version``; returns its result."""
    payload = RelabelRequest(model_version=model_version, scope=scope, prefix=prefix)
    return app.send_task(RELABEL, kwargs={"payload": payload.model_dump()}, queue=RELABEL_QUEUE)


def send_chunks(app: Any, keys: Any, model_version: int, scope: RelabelScope) -> list[Any]:
    """Send keyed relabel tasks for ``keys`` (any iterable) and return their results."""
    results: list[Any] = []
    chunk: list[str] = []

    def flush() -> None:
        request = RelabelRequest(model_version=model_version, scope=scope, keys=list(chunk))
        kwargs = {"payload": request.model_dump()}
        results.append(app.send_task(RELABEL, kwargs=kwargs, queue=RELABEL_QUEUE))
        chunk.clear()

    for key in keys:
        chunk.append(key)
        if len(chunk) == RELABEL_CHUNK:
            flush()
    if chunk:
        flush()
    return results


def register_relabel(app: TaskApp) -> None:
    config = app.labeler_config

    @app.task(
        name=RELABEL,
        shared=False,  # this app's task only: Celery adds shared tasks to every later app
        autoretry_for=(TransientError,),  # storage hiccups; the model may still be loading
        retry_backoff=2,
        retry_backoff_max=config.inference_retry_backoff_max,
        retry_jitter=True,
        max_retries=20,
        soft_time_limit=config.inference_soft_time_limit,
        time_limit=config.inference_time_limit,
        track_started=False,
    )
    def relabel(payload: Any) -> dict[str, Any]:
        engines = app.engines()
        try:
            request = parse_payload(RelabelRequest, payload)
        except InvalidPayload as exc:
            engines.metrics.tasks_rejected.labels(RELABEL, "invalid_payload").inc()
            log.error("rejected %s message, not retried: %s", RELABEL, exc)
            raise
        relabeler = engines.relabeler
        pending_only = request.scope == "pending"
        if request.keys is None:
            keys = relabeler.keys(request.prefix, pending_only=pending_only)
            sent = send_chunks(app, keys, request.model_version, request.scope)
            log.info("relabel with v%d: %d tasks queued", request.model_version, len(sent))
            return {"planned_tasks": len(sent)}
        with engines.metrics.tasks_in_progress.labels(RELABEL).track_inprogress():
            outcome = relabeler.relabel(
                request.keys, request.model_version, pending_only=pending_only
            )
        return {"model_version": request.model_version, **outcome.as_dict()}
