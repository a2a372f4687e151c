"""Wiring metrics exposition into a process: the multiprocess directory, /metrics, /healthz,
and the queue-depth sampler."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

import click
import redis

from labeler.cli_common import broker_problem
from labeler.settings import Settings, env_name
from monitoring.exposition import MetricsServer, exposition_registry
from monitoring.metrics import Metrics
from tasks.contracts import QUEUES
from tasks.queues import queue_depths

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_SAMPLE_SECONDS = 10.0

log = logging.getLogger(__name__)


def multiprocess_dir_or_reexec() -> Path:
    """The shared metrics directory of this worker.

    prometheus_client picks multiprocess mode when it is imported, from the environment, so when
    the variable is missing we set it and re-execute this same command once (``python -m
    labeler worker`` sets it before importing the CLI: only the ``labeler`` script gets here).
    """
    current = os.environ.get(MULTIPROC_ENV)
    if current:
        return Path(current)
    path = tempfile.mkdtemp(prefix="labeler-metrics-")
    argv = [sys.executable, "-m", "labeler", *sys.argv[1:]]
    os.execve(sys.executable, argv, {**os.environ, MULTIPROC_ENV: path})  # noqa: S606
    raise AssertionError("unreachable: os.execve replaces this process or raises OSError")


def broker_health(settings: Settings) -> str | None:
    """``/healthz``'s check: None when the broker answers on a fresh connection."""
    problem = broker_problem(settings, timeout=2)
    return None if problem is None else f"broker unreachable: {problem}"


def start_observability(
    settings: Settings, metrics: Metrics, multiprocess_dir: Path | None
) -> MetricsServer | None:
    """Serve /metrics and /healthz (unless the port is 0) and sample queue depths.

    With ``multiprocess_dir``, call :func:`reset_multiprocess_dir` before building ``metrics``.
    """
    _QueueSampler(settings, metrics).start()
    if settings.metrics_port == 0:
        return None
    registry = exposition_registry(multiprocess_dir)
    try:
        server = MetricsServer(settings.metrics_port, registry, lambda: broker_health(settings))
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve /metrics on port {settings.metrics_port} ({exc.strerror}): set "
            f"{env_name('metrics_port')} to a free port, or 0 to serve no metrics"
        ) from None
    return server.start()


class _QueueSampler(threading.Thread):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(name="labeler-queue-depth", daemon=True)
        self.client = redis.Redis.from_url(
            settings.broker_connection_url(), socket_connect_timeout=5, socket_timeout=5
        )
        self.metrics = metrics

    def run(self) -> None:
        while True:
            try:
                for (queue, state), depth in queue_depths(self.client, QUEUES).items():
                    self.metrics.queue_depth.labels(queue, state).set(depth)
            except redis.RedisError as exc:
                log.warning("cannot sample queue depth: %s", exc)
            threading.Event().wait(QUEUE_SAMPLE_SECONDS)
