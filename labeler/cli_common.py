"""What CLI commands share: settings that fail with a readable message and exit code 2, and the
broker for the commands that queue work (the configured one, or the running stack's)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import redis

from labeler.settings import ConfigError, Settings, env_name, load_settings
from labeler.stack_record import read_record
from storage import LabelerError


def settings_or_exit(data_dir: Path | None = None) -> Settings:
    """The settings (those ``data_dir``, if given, remembers included), or exit 2 saying why."""
    try:
        settings = load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
    )
    # At DEBUG, botocore and urllib3 log request headers, which carry the S3 access key id.
    for chatty in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    return settings


@contextmanager
def failures_as_messages() -> Iterator[None]:
    """A :class:`LabelerError` inside becomes the CLI's one-line error (exit 1), not a trace."""
    try:
        yield
    except LabelerError as exc:
        raise click.ClickException(str(exc)) from None


def broker_or_exit(settings: Settings) -> Settings:
    """The settings to queue work with (see :func:`find_broker`), or exit saying what to fix.

    One PING before queuing anything: a wrong password or an unreachable broker is one clear
    line now, not a minute of Celery reconnecting and a traceback.
    """
    found = find_broker(settings)
    problem = broker_problem(found)
    if problem is None:
        return found
    raise click.ClickException(
        f"cannot use the broker at {settings.broker_url}: {problem} (check "
        f"{env_name('broker_url')} and {env_name('redis_password')}, or start `labeler up` "
        f"on {env_name('data_dir')} {settings.data_dir})"
    )


def find_broker(settings: Settings) -> Settings:
    """The configured broker if it answers, else the broker of the ``labeler up`` running on the
    same data directory if that one answers (said in one line), else the configured one.

    With ``private_redis`` the running stack's broker comes first: the data directory's queues
    live in its own Redis, whatever else answers at the configured URL.
    """
    if not settings.private_redis and broker_problem(settings) is None:
        return settings
    record = read_record(settings.data_dir)
    if record is None or record.broker_url == settings.broker_url:
        return settings
    found = settings.model_copy(update={"broker_url": record.broker_url})
    if broker_problem(found) is not None:
        return settings
    if not settings.private_redis:
        click.echo(
            f"no broker answers at {settings.broker_url}: using the broker of the stack running "
            f"on {record.data_dir} (pid {record.pid}), {record.broker_url}",
            err=True,
        )
    return found


def broker_problem(settings: Settings, timeout: float = 5.0) -> str | None:
    """None if the broker answers a PING on a fresh connection, else what went wrong.

    The one broker check: commands, ``labeler status`` and every process's ``/healthz``.
    """
    client = redis.Redis.from_url(
        settings.broker_connection_url(), socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        client.ping()
    except redis.RedisError as exc:  # redis-py's messages name host and port, never the password
        return str(exc)
    finally:
        client.close()
    return None
