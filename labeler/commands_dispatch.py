"""``labeler dispatch``: bucket events and new files in incoming/ become classify_batch tasks."""

from __future__ import annotations

import logging
import signal
import sys
import uuid
from collections.abc import Callable

import click

from labeler.cli_common import find_broker, settings_or_exit
from labeler.observability import start_observability
from labeler.settings import Settings, env_name
from labeler.wiring import Stores, backlog_marks, build_app, dispatch_config, sqs_client
from monitoring.metrics import Metrics
from storage import Area, LocalStore, ObjectStore
from tasks.app import LabelerCelery
from tasks.contracts import CLASSIFY_BATCH, INFERENCE_QUEUE, ClassifyBatchRequest
from tasks.queues import messages_in_flight, waiting_images
from workers.dispatch import DirectoryWatcher, DispatchConfig, Dispatcher, SqsInbox, s3_root
from workers.metered_store import MeteredStore

log = logging.getLogger(__name__)


@click.command()
def dispatch() -> None:
    """Turn bucket events and new objects in incoming/ into classify_batch tasks.

    Runs until SIGTERM or SIGINT, then sends what it holds and exits 0. Serves /metrics and
    /healthz on LABELER_METRICS_PORT.
    """
    from prometheus_client import REGISTRY

    settings = find_broker(settings_or_exit())
    metrics = Metrics(REGISTRY)  # one process: no multiprocess mode
    dispatcher = build_dispatcher(settings, metrics)
    start_observability(settings, metrics, None)

    def _stop(signum: int, _frame: object) -> None:
        log.info("%s: finishing", signal.Signals(signum).name)
        dispatcher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.exit(0 if dispatcher.run() else 1)


def checked_dispatch_config(settings: Settings) -> DispatchConfig:
    """The engine's configuration; exits with a message naming the variable when it cannot work."""
    high, low = backlog_marks(settings)
    if low >= high:
        click.echo(
            f"invalid configuration:\n  {env_name('backlog_low_water')}: must be below "
            f"{env_name('backlog_high_water')} ({high}) (got {low})",
            err=True,
        )
        sys.exit(2)
    return dispatch_config(settings)


def incoming_watcher(settings: Settings, incoming: ObjectStore) -> DirectoryWatcher | None:
    """The inotify watcher of a local incoming directory, unless turned off."""
    inner = incoming.inner if isinstance(incoming, MeteredStore) else incoming
    if settings.watch_incoming and isinstance(inner, LocalStore):
        return DirectoryWatcher(inner.root)
    return None


def build_dispatcher(settings: Settings, metrics: Metrics) -> Dispatcher:
    """The dispatcher of this process, wired to Redis, the incoming store and the Celery app."""
    import redis

    config = checked_dispatch_config(settings)
    client = redis.Redis.from_url(
        settings.broker_connection_url(),
        socket_connect_timeout=5,
        socket_timeout=config.poll + 10,  # longer than a blocking BLMOVE
        health_check_interval=30,
    )
    stores = Stores(settings, metrics)
    incoming = stores.area(Area.INCOMING)
    watcher = incoming_watcher(settings, incoming)
    if s3_root(incoming) is None and watcher is None and not config.scan_interval:
        log.warning(
            "%s is not in S3 (no events), not watched, and %s is 0: nothing will ever be "
            "dispatched",
            incoming.uri,
            env_name("scan_interval_seconds"),
        )
    return Dispatcher(
        client,
        incoming,
        batch_sender(build_app(settings)),
        waiting_images(client, INFERENCE_QUEUE, settings.batch_max_images),
        metrics,
        config,
        labels=stores.area(Area.LABELS),
        in_flight=messages_in_flight(client, INFERENCE_QUEUE),
        watcher=watcher,
        sqs=sqs_inbox(settings),
    )


def sqs_inbox(settings: Settings) -> SqsInbox | None:
    """The SQS intake when LABELER_EVENTS_SQS_URL is set: its own client, standard retries."""
    if settings.events_sqs_url is None:
        return None
    client = sqs_client(settings)
    log.info(
        "long-polling SQS queue %s at %s (region %s)",
        settings.events_sqs_url,
        client.meta.endpoint_url,
        client.meta.region_name,
    )
    return SqsInbox(
        client, settings.events_sqs_url, visibility=settings.events_sqs_visibility_seconds
    )


def batch_sender(app: LabelerCelery) -> Callable[[list[str]], None]:
    """``enqueue(keys)``: one classify_batch task on the inference queue, with a fresh batch id."""

    def enqueue(keys: list[str]) -> None:
        request = ClassifyBatchRequest(batch_id=f"dispatch-{uuid.uuid4().hex}", keys=keys)
        app.send_task(
            CLASSIFY_BATCH, kwargs={"payload": request.model_dump()}, queue=INFERENCE_QUEUE
        )
        log.info("dispatched batch %s: %d images", request.batch_id, len(keys))

    return enqueue
