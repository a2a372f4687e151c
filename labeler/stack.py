"""The supervisor of ``labeler up`` and ``labeler demo``: the components as child processes.

A :class:`Stack` starts each component, restarts one that exits (with backoff), and records
where it is in ``DATA_DIR/run/stack.json`` so other commands on the same data directory find its
broker. Every value comes from :class:`Settings`; the children's environment is a new dict.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from labeler.activity import ActivitySampler
from labeler.private_redis import start_private_redis
from labeler.settings import Settings, env_name
from labeler.stack_record import ComponentState, StackRecord, remove_record, write_record
from labeler.supervision import CrashLoop, StackFailed, SupervisedProcess
from monitoring import SupervisorMetrics

__all__ = [
    "REDIS",
    "STOP_TIMEOUT",
    "SUPERVISOR_PORT_OFFSET",
    "Component",
    "CrashLoop",
    "Stack",
    "StackFailed",
    "default_components",
]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0  # a worker finishes its batch before it exits
REDIS = "redis"  # the private redis-server's name in logs, metrics and the record


@dataclass(frozen=True)
class Component:
    """One long-running ``labeler`` command of the stack.

    Attributes:
        name: its name in logs, the record and ``labeler status``.
        args: the command line after ``labeler``.
        port: where it serves /metrics and /healthz (0 or None: nowhere).
        port_setting: the setting that gives it that port (the review app serves them on its
            own HTTP port).
        celery_node: for a Celery worker, its node name before the ``@`` (answers a ping).
    """

    name: str
    args: tuple[str, ...]
    port: int | None = None
    port_setting: str = "metrics_port"
    celery_node: str | None = None


# (name, args, metrics port offset or None, Celery node prefix). Adding a component is one line;
# offset 3 is `labeler up` itself, so a new one with /healthz takes 4.
_COMPONENTS: list[tuple[str, tuple[str, ...], int | None, str | None]] = [
    ("inference-worker", ("worker", "--queues", "inference,relabel"), 0, "inference+relabel"),
    ("training-worker", ("worker", "--queues", "training"), 1, "training"),
    ("dispatcher", ("dispatch",), 2, None),
    ("beat", ("beat",), None, None),
]
SUPERVISOR_PORT_OFFSET = 3  # `labeler up` itself: labeler_component_restarts_total


def default_components(settings: Settings) -> list[Component]:
    """One inference worker, one training worker, the dispatcher, beat and the review app."""
    base = settings.metrics_port

    def port(offset: int | None) -> int:
        return base + offset if base and offset is not None else 0  # 0: no metrics endpoint

    components = [
        Component(name, args, port(at), celery_node=node) for name, args, at, node in _COMPONENTS
    ]
    review = Component("review", ("review",), settings.review_port, port_setting="review_port")
    return [*components, review]


class Stack:
    """Starts components as supervised child processes, restarts them, and stops them all.

    Args:
        settings: the stack's settings (data directory, broker, private Redis).
        components: what to run.
        env: the children's environment, copied (default: this process's).
        metrics: counts restarts, if given.
        metrics_port: the supervisor's own /metrics port, for the record.
    """

    def __init__(
        self,
        settings: Settings,
        components: list[Component],
        *,
        env: Mapping[str, str] | None = None,
        metrics: SupervisorMetrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.components = components
        self.logs = self.data_dir / "logs"
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.broker_url = ""
        self._base_env = dict(os.environ if env is None else env)
        self._redis: SupervisedProcess | None = None
        self._children: dict[str, SupervisedProcess] = {}
        urls = [f"http://127.0.0.1:{c.port}" for c in components if c.port]
        self._activity = ActivitySampler(urls)
        self._recent: dict[str, Any] | None = None

    def __enter__(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.broker_url = self._broker()
            for component in self.components:
                argv = [sys.executable, "-m", "labeler", *component.args]
                env = self.child_env(component)
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

    def child_env(self, component: Component | None = None) -> dict[str, str]:
        """A new environment for a child: the base one, the data directory and the broker made
        explicit, and the component's port under its setting's name."""
        env = dict(self._base_env)
        env[env_name("data_dir")] = str(self.data_dir)
        env[env_name("broker_url")] = self.broker_url or self.settings.broker_url
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if component is not None and component.port is not None:
            env[env_name(component.port_setting)] = str(component.port)
        return env

    def check(self) -> None:
        """Restart what exited (after its backoff).

        Raises:
            CrashLoop: a component keeps exiting (a :class:`StackFailed`).
        """
        now = time.monotonic()
        changed = False
        for child in self._supervised():
            event = child.supervise(now)
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
            data_dir=str(self.data_dir),
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
            metrics_port=component.port or None,
            celery_node=component.celery_node,
            pid=child.pid,
            restarts=child.restarts,
            last_exit=child.last_exit,
        )

    def _broker(self) -> str:
        """The configured Redis if it answers (unless a private one is asked for), else a
        private one persisting under the data directory."""
        if self.settings.private_redis:
            return self._start_private_redis()
        url = self.settings.broker_url
        client = redis.Redis.from_url(
            self.settings.broker_connection_url(), socket_connect_timeout=1
        )
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
        secret = self.settings.redis_password
        password = secret.get_secret_value() if secret is not None else None
        self._redis, url = start_private_redis(
            self.data_dir / "redis", password, self._log(REDIS), name=REDIS
        )
        return url
