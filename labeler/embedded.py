"""The embedded default on one machine: Redis, workers, dispatcher and beat as child processes.

``labeler up`` and ``labeler demo`` both run a :class:`Stack`, which restarts a child that exits
(with backoff) and records where it is in ``DATA_DIR/run/stack.json`` so other commands on the
same data directory find its broker. State lives under the data directory (the local store's
areas, Redis's append-only file and port, beat's schedule, logs), so a second ``labeler up``
carries on where the first stopped, at the same address.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import click
import redis
from prometheus_client import CollectorRegistry

from labeler.activity import ActivitySampler
from labeler.private_redis import start_private_redis
from labeler.settings import Settings, env_name
from labeler.stack_record import (
    ComponentState,
    StackRecord,
    StackRunning,
    lock_data_dir,
    pid_alive,
    read_record,
    remove_record,
    write_record,
)
from labeler.supervision import CrashLoop, SupervisedProcess
from monitoring import MetricsServer, SupervisorMetrics
from storage import Area

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0  # a worker finishes its batch before it exits
REDIS = "redis"  # the private redis-server's name in logs, metrics and the record


@dataclass(frozen=True)
class Component:
    """One long-running ``labeler`` command of the stack.

    Attributes:
        name: its name in logs, the record and ``labeler status``.
        args: the command line after ``labeler``.
        metrics_port: where it serves /metrics and /healthz (0 or None: nowhere).
        celery_node: for a Celery worker, its node name before the ``@`` (answers a ping).
    """

    name: str
    args: tuple[str, ...]
    metrics_port: int | None = None
    celery_node: str | None = None


# (name, args, metrics port offset or None, Celery node prefix). Adding a component is one line;
# offset 3 is `labeler up` itself, so a new one with /healthz takes 4.
_COMPONENTS: list[tuple[str, tuple[str, ...], int | None, str | None]] = [
    ("inference-worker", ("worker", "--queues", "inference"), 0, "inference"),
    ("training-worker", ("worker", "--queues", "training"), 1, "training"),
    ("dispatcher", ("dispatch",), 2, None),
    ("beat", ("beat",), None, None),
]
SUPERVISOR_PORT_OFFSET = 3  # `labeler up` itself: labeler_component_restarts_total


def default_components(metrics_port: int, review_port: int) -> list[Component]:
    """One inference worker, one training worker, the dispatcher, beat and the review app."""

    def port(offset: int | None) -> int:
        # 0: no metrics endpoint
        return metrics_port + offset if metrics_port and offset is not None else 0

    components = [Component(name, args, port(at), node) for name, args, at, node in _COMPONENTS]
    # The review app serves /healthz and /metrics on its own port, LABELER_REVIEW_PORT.
    return [*components, Component("review", ("review",), review_port)]


class Stack:
    """Starts components as supervised child processes, restarts them, and stops them all."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        components: list[Component],
        *,
        private_redis: bool = False,
        metrics: SupervisorMetrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.private_redis = private_redis
        self.env = env
        self.components = components
        self.logs = data_dir / "logs"
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.broker_url = ""
        self._redis: SupervisedProcess | None = None
        self._children: dict[str, SupervisedProcess] = {}
        urls = [f"http://127.0.0.1:{c.metrics_port}" for c in components if c.metrics_port]
        self._activity = ActivitySampler(urls)
        self._recent: dict[str, Any] | None = None

    def __enter__(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.broker_url = self.env["LABELER_BROKER_URL"] = self._broker()
            for component in self.components:
                env = dict(self.env)
                if component.metrics_port is not None:
                    env["LABELER_METRICS_PORT"] = str(component.metrics_port)
                argv = [sys.executable, "-m", "labeler", *component.args]
                child = SupervisedProcess(component.name, argv, env, self._log(component.name))
                child.start()
                self._children[component.name] = child
            self._write_record()
            self._activity.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check(self) -> None:
        """Restart what exited (after its backoff); raise if one is in a crash loop."""
        now = time.monotonic()
        changed = False
        for child in self._supervised():
            try:
                event = child.supervise(now)
            except CrashLoop as exc:
                raise click.ClickException(str(exc)) from None
            if event == "restarted" and self.metrics is not None:
                self.metrics.component_restarts.labels(child.name).inc()
            changed = changed or event is not None
        recent = self._activity.recent()
        if changed or recent != self._recent:
            self._recent = recent
            self._write_record()

    def stop(self) -> None:
        """Stop the components (they finish their batches), then Redis; forget the record."""
        self._activity.stop()
        for child in self._children.values():
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self._children.values():
            child.wait(deadline)
        self._children.clear()
        if self._redis is not None:
            self._redis.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self._redis.wait(time.monotonic() + 30)
            self._redis = None
        remove_record(self.data_dir)

    def _supervised(self) -> list[SupervisedProcess]:
        return [*([self._redis] if self._redis else []), *self._children.values()]

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _write_record(self) -> None:
        record = StackRecord(
            pid=os.getpid(),
            data_dir=str(self.data_dir.resolve()),
            broker_url=self.broker_url,
            private_redis=self._redis is not None,
            metrics_port=self.metrics_port,
            components=[self._state(child) for child in self._supervised()],
            recent=self._recent,
        )
        write_record(self.data_dir, record)

    def _state(self, child: SupervisedProcess) -> ComponentState:
        found = [c for c in self.components if c.name == child.name]
        component = found[0] if found else Component(child.name, ())  # the private Redis
        return ComponentState(
            name=child.name,
            metrics_port=component.metrics_port or None,
            celery_node=component.celery_node,
            pid=child.pid,
            restarts=child.restarts,
            last_exit=child.last_exit,
        )

    def _broker(self) -> str:
        """The configured Redis if it answers, else a private one persisting under data_dir."""
        if self.private_redis:
            return self._start_private_redis()
        url = self.env.get("LABELER_BROKER_URL", "redis://127.0.0.1:6379/0")
        password = self.env.get("LABELER_REDIS_PASSWORD")
        client = redis.Redis.from_url(url, password=password, socket_connect_timeout=1)
        try:
            client.ping()
            log.info("using the Redis at %s", url)
            return url
        except redis.RedisError:
            pass
        finally:
            client.close()
        return self._start_private_redis()

    def _start_private_redis(self) -> str:
        password = self.env.get("LABELER_REDIS_PASSWORD")
        self._redis, url = start_private_redis(
            self.data_dir / "redis", password, self._log(REDIS), name=REDIS
        )
        return url


def stack_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The children's environment: this one, with the data directory made explicit."""
    env = dict(os.environ)
    env["LABELER_DATA_DIR"] = str(data_dir.resolve())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("LABELER_BROKER_URL", settings.broker_url)
    return env


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
        raise click.ClickException(
            f"cannot serve `labeler up`'s /metrics on port {port} ({exc.strerror}): components "
            f"use {env_name('metrics_port')} + 0..{SUPERVISOR_PORT_OFFSET}; choose a free range"
        ) from None
    return metrics, port


def run_up(settings: Settings, data_dir: Path | None) -> None:
    """``labeler up``: start the stack, say where to drop images, supervise until Ctrl-C."""
    root = (data_dir or settings.data_dir).resolve()
    try:
        lock = lock_data_dir(root)  # held until this process exits, however it exits
    except StackRunning as exc:
        raise click.ClickException(str(exc)) from None
    for area in Area:
        (root / area.value).mkdir(parents=True, exist_ok=True)
    _outlive_previous_stack(root)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    components = default_components(settings.metrics_port, settings.review_port)
    metrics, port = _serve_supervisor_metrics(settings, components)
    env = stack_env(settings, root)
    with lock, Stack(root, env, components, metrics=metrics, metrics_port=port) as stack:
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
    click.echo(f"  drop images into   {root / Area.INCOMING.value}/")
    click.echo(f"  labels appear in   {root / Area.LABELS.value}/<same path>.json")
    click.echo(f"  training data in   {root / Area.TRAINING.value}/<class>/<file>")
    review = next((c for c in components if c.name == "review"), None)
    if review is not None:
        click.echo(f"  review at          http://127.0.0.1:{review.metrics_port}/")
    ports = [f"{c.name} :{c.metrics_port}" for c in components if c.metrics_port]
    if port:
        ports.append(f"labeler up :{port}")
    if ports:
        click.echo(f"  metrics            {', '.join(ports)} (/metrics, /healthz)")
    click.echo("`labeler status` shows the stack; other commands on this data directory find it.")
    click.echo("Ctrl-C stops everything; `labeler up` again carries on.")
