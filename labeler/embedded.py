"""The embedded default on one machine: Redis, workers, dispatcher and beat as child processes.

``labeler up`` and ``labeler demo`` both run a :class:`Stack`. State lives under the data
directory (the local store's areas, Redis's append-only file, beat's schedule, logs), so a second
``labeler up`` carries on where the first stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import click
import redis

from labeler.settings import Settings
from storage import Area

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0  # a worker finishes its batch before it exits


@dataclass(frozen=True)
class Component:
    name: str
    args: tuple[str, ...]  # after `labeler`
    metrics_port: int | None = None


def default_components(metrics_port: int) -> list[Component]:
    """One inference worker, one training worker, the dispatcher, beat and the review app."""

    def port(offset: int) -> int:
        return metrics_port + offset if metrics_port else 0  # 0: no metrics endpoint

    return [
        Component("inference-worker", ("worker", "--queues", "inference"), port(0)),
        Component("training-worker", ("worker", "--queues", "training"), port(1)),
        Component("dispatcher", ("dispatch",), port(2)),
        Component("beat", ("beat",), 0),
        Component("review", ("review",)),  # serves its own /metrics on LABELER_REVIEW_PORT
    ]


class Stack:
    """Starts components as child processes (each in its own session), and stops them all."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        components: list[Component],
        *,
        private_redis: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.private_redis = private_redis
        self.env = env
        self.components = components
        self.logs = data_dir / "logs"
        self._redis: subprocess.Popen[bytes] | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env["LABELER_BROKER_URL"] = self._broker()
        for component in self.components:
            env = dict(self.env)
            if component.metrics_port is not None:
                env["LABELER_METRICS_PORT"] = str(component.metrics_port)
            with (self.logs / f"{component.name}.log").open("ab") as out:
                self._children[component.name] = subprocess.Popen(
                    [sys.executable, "-m", "labeler", *component.args],
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check(self) -> None:
        """Raise if a component died: the stack is no longer whole."""
        for name, process in self._children.items():
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise click.ClickException(
                    f"{name} exited with code {process.returncode}; its log ends:\n{tail}"
                )

    def stop(self) -> None:
        for process in self._children.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self._children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self._children.clear()
        if self._redis is not None:
            self._redis.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self._redis.wait(30)
            self._redis = None

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
        binary = shutil.which("redis-server")
        if binary is None:
            raise click.ClickException(
                "no Redis answers at LABELER_BROKER_URL and redis-server is not installed: "
                "apt-get install -y redis-server"
            )
        workdir = self.data_dir / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        with (self.logs / "redis.log").open("ab") as out:
            self._redis = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                 "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while not _answers(url):
            if self._redis.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"private redis-server did not start: {self.logs}")
            time.sleep(0.05)
        return url


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stack_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The children's environment: this one, with the data directory made explicit."""
    env = dict(os.environ)
    env["LABELER_DATA_DIR"] = str(data_dir.resolve())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("LABELER_BROKER_URL", settings.broker_url)
    return env


def run_up(settings: Settings, data_dir: Path | None) -> None:
    """``labeler up``: start the stack, say where to drop images, run until Ctrl-C."""
    root = (data_dir or settings.data_dir).resolve()
    for area in Area:
        (root / area.value).mkdir(parents=True, exist_ok=True)
    components = default_components(settings.metrics_port)
    with Stack(root, stack_env(settings, root), components) as stack:
        click.echo(f"labeler is up (data in {root}, logs in {stack.logs})")
        click.echo(f"  drop images into   {root / Area.INCOMING.value}/")
        click.echo(f"  labels appear in   {root / Area.LABELS.value}/<same path>.json")
        click.echo(f"  training data in   {root / Area.TRAINING.value}/<class>/<file>")
        click.echo(f"  review at          http://{settings.review_host}:{settings.review_port}/")
        ports = [f"{c.name} :{c.metrics_port}" for c in components if c.metrics_port]
        if ports:
            click.echo(f"  metrics            {', '.join(ports)} (/metrics, /healthz)")
        click.echo("Ctrl-C stops everything; `labeler up` again carries on.")
        stopping = False

        def _stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stopping:
            stack.check()
            time.sleep(0.5)
        click.echo("stopping...")
    click.echo("stopped.")
