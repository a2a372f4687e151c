"""``labeler up``: the embedded default on one machine, supervised until Ctrl-C.

State lives under the data directory (the local store's areas, Redis's append-only file and
port, beat's schedule, logs), so a second ``labeler up`` carries on where the first stopped, at
the same address. The supervisor itself is :mod:`labeler.stack`.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click
from prometheus_client import CollectorRegistry

from labeler.settings import Settings, env_name
from labeler.stack import (
    REDIS,
    STOP_TIMEOUT,
    SUPERVISOR_PORT_OFFSET,
    Component,
    Stack,
    default_components,
)
from labeler.stack_record import lock_data_dir, pid_alive, read_record
from labeler.supervision import StackFailed
from monitoring import MetricsServer, SupervisorMetrics
from storage import Area


def _serve_supervisor_metrics(
    settings: Settings, components: list[Component]
) -> tuple[SupervisorMetrics, int | None]:
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(registry, [REDIS, *(c.name for c in components)])
    if not settings.metrics_port:
        return metrics, None
    port = settings.metrics_port + SUPERVISOR_PORT_OFFSET
    try:
        MetricsServer(port, registry, lambda: None).start()
    except OSError as exc:
        raise StackFailed(
            f"cannot serve `labeler up`'s /metrics on port {port} ({exc.strerror}): components "
            f"use {env_name('metrics_port')} + 0..{SUPERVISOR_PORT_OFFSET}; choose a free range"
        ) from None
    return metrics, port


def run_up(settings: Settings) -> None:
    """Start the stack on ``settings.data_dir``, say where to drop images, supervise until
    SIGINT or SIGTERM.

    Raises:
        StackRunning: another ``labeler up`` holds the data directory.
        StackFailed: the stack cannot start or keeps crashing.
    """
    root = settings.data_dir.resolve()
    settings = settings.model_copy(update={"data_dir": root})
    lock = lock_data_dir(root)  # held until this process exits, however it exits
    for area in Area:
        (root / area.value).mkdir(parents=True, exist_ok=True)
    _outlive_previous_stack(root)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    components = default_components(settings)
    metrics, port = _serve_supervisor_metrics(settings, components)
    with lock, Stack(settings, components, metrics=metrics, metrics_port=port) as stack:
        _banner(stack, root, components, port)
        while not stopping:
            stack.check()
            time.sleep(0.5)
        click.echo("stopping...")
    click.echo("stopped.")


def _outlive_previous_stack(root: Path) -> None:
    """A stack killed with SIGKILL left a stale record; its children got SIGTERM when it died
    and finish their batches. Wait for them, so their ports (Redis's too) are free again."""
    record = read_record(root, stale=True)
    pids = [c.pid for c in record.components if c.pid and pid_alive(c.pid)] if record else []
    if not pids:
        return
    click.echo(f"waiting for the previous stack's processes to exit ({', '.join(map(str, pids))})")
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)


def _banner(stack: Stack, root: Path, components: list[Component], port: int | None) -> None:
    click.echo(f"labeler is up (data in {root}, logs in {stack.logs})")
    click.echo(f"  broker             {stack.broker_url}")
    click.echo(f"  model              {stack.settings.model_name}")
    click.echo(f"  drop images into   {root / Area.INCOMING.value}/")
    click.echo(f"  labels appear in   {root / Area.LABELS.value}/<same path>.json")
    click.echo(f"  training data in   {root / Area.TRAINING.value}/<class>/<file>")
    review = next((c for c in components if c.name == "review"), None)
    if review is not None:
        click.echo(f"  review at          http://127.0.0.1:{review.port}/")
    ports = [f"{c.name} :{c.port}" for c in components if c.port]
    if port:
        ports.append(f"labeler up :{port}")
    if ports:
        click.echo(f"  metrics            {', '.join(ports)} (/metrics, /healthz)")
    click.echo("`labeler status` shows the stack; other commands on this data directory find it.")
    click.echo("Ctrl-C stops everything; `labeler up` again carries on.")
