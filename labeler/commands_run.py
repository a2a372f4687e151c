"""``labeler worker``, ``labeler submit`` and ``labeler classify``."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import click

from labeler.cli_common import broker_or_exit, find_broker, settings_or_exit
from labeler.observability import multiprocess_dir_or_reexec, start_observability
from labeler.wiring import Stores, build_app, engine_limits, model_runtime
from monitoring.exposition import reset_multiprocess_dir
from monitoring.metrics import Metrics
from storage import Area, LabelRecord
from tasks.contracts import (
    CLASSIFY_BATCH,
    INFERENCE_QUEUE,
    QUEUES,
    TRAINING_QUEUE,
    ClassifyBatchRequest,
)


@click.command()
@click.option("--queues", default=INFERENCE_QUEUE, show_default=True, help="Comma-separated.")
@click.option(
    "--concurrency",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes. Each loads the model once and TensorFlow already uses every core, "
    "so 1 per machine (or per GPU) is right; raise it only for I/O-bound storage.",
)
@click.option(
    "--pool", default="prefork", type=click.Choice(["prefork", "solo"]), show_default=True
)
@click.option("--hostname", help="Celery node name (default: <queues>@<host>).")
def worker(queues: str, concurrency: int, pool: str, hostname: str | None) -> None:
    """Start a Celery worker for the given queues."""
    settings = find_broker(settings_or_exit())
    wanted = frozenset(q.strip() for q in queues.split(",") if q.strip())
    if not wanted or not wanted <= set(QUEUES):
        raise click.BadParameter(f"choose from {', '.join(QUEUES)}", param_hint="--queues")
    metrics_dir = multiprocess_dir_or_reexec()
    reset_multiprocess_dir(metrics_dir)  # before any child starts writing to it
    app = build_app(settings, wanted, metrics_dir)
    start_observability(settings, Metrics(None), metrics_dir)
    argv = [
        "worker",
        f"--queues={','.join(q for q in QUEUES if q in wanted)}",  # relabel last: lowest
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={settings.log_level}",
        f"--hostname={hostname or '+'.join(sorted(wanted)) + '@%h'}",
        "--without-gossip",  # workers never talk to each other; Redis is the only channel
        "--without-mingle",
    ]
    if TRAINING_QUEUE in wanted:
        # TensorFlow's memory grows across repeated fits: a fresh child for every retrain.
        argv.append("--max-tasks-per-child=1")
    app.worker_main(argv)


@click.command()
@click.argument("prefix", default="")
@click.option("--wait", is_flag=True, help="Show progress until every batch has finished.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait at most.")
@click.option("--model-version", type=click.IntRange(min=1), help="Pin a model version.")
def submit(prefix: str, wait: bool, timeout: float, model_version: int | None) -> None:
    """Queue every object under incoming/PREFIX for labeling, in batches."""
    settings = settings_or_exit()
    keys = [info.key for info in Stores(settings).area(Area.INCOMING).list(prefix)]
    if not keys:
        click.echo(f"nothing under incoming/{prefix}")
        return
    settings = broker_or_exit(settings)
    app = build_app(settings)
    run = uuid.uuid4().hex[:12]
    size = settings.batch_max_images
    pending: dict[str, tuple[Any, int]] = {}
    for n, start in enumerate(range(0, len(keys), size)):
        chunk = keys[start : start + size]
        request = ClassifyBatchRequest(
            batch_id=f"{run}-{n}", keys=chunk, model_version=model_version
        )
        result = app.send_task(
            CLASSIFY_BATCH, kwargs={"payload": request.model_dump()}, queue=INFERENCE_QUEUE
        )
        pending[request.batch_id] = (result, len(chunk))
    click.echo(f"submitted {len(keys)} images in {len(pending)} batches (run {run})")
    if wait:
        _wait_for(pending, len(keys), timeout)


def _wait_for(pending: dict[str, tuple[Any, int]], total: int, timeout: float) -> None:
    totals = {"labeled": 0, "errored": 0, "skipped": 0}
    failed: list[str] = []
    deadline = time.monotonic() + timeout
    with click.progressbar(length=total, label="labeling", show_pos=True) as bar:
        while pending and time.monotonic() < deadline:
            for batch_id, (result, count) in list(pending.items()):
                if not result.ready():
                    continue
                del pending[batch_id]
                bar.update(count)
                if result.successful():
                    for name in totals:
                        totals[name] += int(result.result[name])
                else:
                    failed.append(f"{batch_id}: {result.result!r}")
            time.sleep(0.2)
    click.echo(
        f"labeled {totals['labeled']}, errors {totals['errored']}, already done {totals['skipped']}"
    )
    if failed or pending:
        for line in failed:
            click.echo(f"batch failed: {line}", err=True)
        if pending:
            click.echo(f"{len(pending)} batches still running after {timeout}s", err=True)
        raise SystemExit(1)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def classify(files: tuple[str, ...]) -> None:
    """Classify local FILES with the production model, no broker; print JSON lines.

    The same engine as a worker (byte and pixel limits, decode threads, record format), reading
    the files instead of incoming/ and printing the records, in the order given, instead of
    writing them to labels/.
    """
    from monitoring.metrics import Metrics
    from storage import LocalFiles
    from workers.inference import BatchClassifier

    settings = settings_or_exit()
    runtime = model_runtime(settings, Stores(settings).registry())
    limits = engine_limits(settings)
    printed = _PrintedRecords()
    classifier = BatchClassifier(LocalFiles(), printed, runtime, Metrics(None), limits)
    try:
        size = settings.batch_max_images
        for start in range(0, len(files), size):
            chunk = files[start : start + size]
            classifier.classify(chunk, batch_id=f"cli-{start // size}")
            printed.flush(chunk)
    finally:
        classifier.close()


class _PrintedRecords:
    """A record sink for the CLI: nothing is ever done before, records print in input order."""

    def __init__(self) -> None:
        self._records: dict[str, LabelRecord] = {}
        self._lock = threading.Lock()

    def read(self, source_key: str) -> LabelRecord | None:
        return None

    def write(self, record: LabelRecord, *, if_new: bool = False, durable: bool = True) -> None:
        with self._lock:  # written from the engine's I/O threads
            self._records[record.source_key] = record

    def sync(self) -> None:
        """Nothing to make durable: records are printed, in order, by :meth:`flush`."""

    def flush(self, keys: tuple[str, ...]) -> None:
        for key in dict.fromkeys(keys):
            click.echo(self._records.pop(key).model_dump_json(exclude_none=True))
