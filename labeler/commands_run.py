"""``labeler worker``, ``labeler submit`` and ``labeler classify``."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import click

from labeler.cli_common import broker_or_exit, find_broker, settings_or_exit
from labeler.observability import multiprocess_dir_or_reexec, start_observability
from labeler.wiring import Stores, build_app
from monitoring.exposition import reset_multiprocess_dir
from monitoring.metrics import Metrics
from storage import Area
from tasks.app import INFERENCE_QUEUE, QUEUES, TRAINING_QUEUE
from tasks.contracts import CLASSIFY_BATCH, ClassifyBatchRequest


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
        f"--queues={','.join(sorted(wanted))}",
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
    """Classify local FILES with the production model, no broker; print JSON lines."""
    import numpy as np

    from storage import RecordError
    from workers.batch import make_record
    from workers.decoding import ImageRejected, configure_pillow, decode_image
    from workers.model_runtime import ModelRuntime

    settings = settings_or_exit()
    configure_pillow(settings.max_image_pixels)
    runtime = ModelRuntime(Stores(settings).registry(), batch_size=settings.inference_batch_size)
    model = runtime.current()
    size = model.metadata.input_size
    for start in range(0, len(files), model.batch_size):
        chunk = files[start : start + model.batch_size]
        decoded: list[tuple[str, str, Any]] = []
        for name in chunk:
            data = Path(name).read_bytes()
            etag = hashlib.md5(data).hexdigest()  # noqa: S324 - the same ETag S3 would give
            try:
                decoded.append(
                    (name, etag, decode_image(data, size, max_pixels=settings.max_image_pixels))
                )
            except ImageRejected as exc:
                error = RecordError(reason=exc.reason, detail=exc.detail)
                record = make_record(name, etag, model.metadata, None, error)
                click.echo(record.model_dump_json(exclude_none=True))
        if decoded:
            probabilities = model.predict(np.stack([pixels for _, _, pixels in decoded]))
            for (name, etag, _), probs in zip(decoded, probabilities, strict=True):
                record = make_record(name, etag, model.metadata, probs)
                click.echo(record.model_dump_json(exclude_none=True))
