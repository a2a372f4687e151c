"""What CLI commands share: settings that fail with a readable message and exit code 2, and a
broker check for the commands that queue work."""

from __future__ import annotations

import logging
import sys

import click
import redis

from labeler.settings import ConfigError, Settings, env_name, load_settings


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
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


def broker_or_exit(settings: Settings) -> None:
    """One PING before queuing anything: a wrong password or an unreachable broker is one clear
    line now, not a minute of Celery reconnecting and a traceback."""
    client = redis.Redis.from_url(
        settings.broker_connection_url(), socket_connect_timeout=5, socket_timeout=5
    )
    try:
        client.ping()
    except redis.RedisError as exc:  # redis-py's messages name host and port, never the password
        raise click.ClickException(
            f"cannot use the broker at {settings.broker_url}: {exc} (check "
            f"{env_name('broker_url')} and {env_name('redis_password')})"
        ) from None
    finally:
        client.close()
