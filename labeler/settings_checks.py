"""What Settings accepts: value types with their checks, the cross-field rules, and the message
that names each bad variable (secrets never shown)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AfterValidator, SecretStr, ValidationError

from storage import InvalidStoreUri, PermanentError, check_store_uri

if TYPE_CHECKING:
    from labeler.settings import Settings

ENV_PREFIX = "LABELER_"


class ConfigError(PermanentError):
    """Settings that cannot work; the message names each variable and what is allowed."""


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _store_uri(value: str) -> str:
    try:
        return check_store_uri(value)
    except InvalidStoreUri as exc:
        raise ValueError(str(exc)) from None


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must be redis://host:port/db or rediss://host:port/db (TLS)")
    if not parts.hostname:
        raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
    if parts.password:
        raise ValueError(
            "must not contain a password: set LABELER_REDIS_PASSWORD instead (URLs end up in logs)"
        )
    return value


def _http_url(value: str) -> str:
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:9000")
    return value


def _sqs_queue_url(value: str) -> str:
    from workers.dispatch import check_queue_url

    return check_queue_url(value)  # its ValueError says what a queue URL looks like


def _augmentation(value: str) -> str:
    from workers.training import parse_augmentation

    parse_augmentation(value)  # its ValueError says what is allowed
    return value


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5:
        raise ValueError("must have 5 fields: minute hour day-of-month month day-of-week")
    from celery.schedules import crontab

    try:
        crontab(*fields)
    except ValueError as exc:
        raise ValueError(f"is not a valid cron expression: {exc}") from None
    return value


StoreUri = Annotated[str, AfterValidator(_store_uri)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
SqsQueueUrl = Annotated[str, AfterValidator(_sqs_queue_url)]
Augmentation = Annotated[str, AfterValidator(_augmentation)]
Cron = Annotated[str, AfterValidator(_cron)]


def check_visibility_outlasts_tasks(s: Settings) -> None:
    """A batch waiting out its retry backoff stays reserved by the worker, then runs."""
    batch = s.inference_time_limit_seconds + s.retry_backoff_max_seconds
    for name, timeout, longest in (
        (
            "VISIBILITY_TIMEOUT",
            s.visibility_timeout_seconds,
            max(batch, s.training_time_limit_seconds),
        ),
        ("INFERENCE_VISIBILITY_TIMEOUT", s.inference_visibility_timeout_seconds, batch),
    ):
        if timeout <= longest:
            raise ValueError(
                f"LABELER_{name}_SECONDS ({timeout}) must exceed the longest time a task "
                f"can stay reserved ({longest} s: its time limit, plus the retry backoff "
                "cap for a batch), or a slow task runs twice"
            )


def check_s3_credentials_together(s: Settings) -> None:
    if (s.s3_access_key_id is None) != (s.s3_secret_access_key is None):
        raise ValueError(
            "set both LABELER_S3_ACCESS_KEY_ID and LABELER_S3_SECRET_ACCESS_KEY, or neither"
        )


_PLACEHOLDER = "change-me"  # how every secret in .env.example starts
_RANDOM_VALUE_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_no_placeholder_secrets(s: Settings) -> None:
    for name in ("redis_password", "s3_secret_access_key", "review_secret_key"):
        secret: SecretStr | None = getattr(s, name)
        if secret is not None and secret.get_secret_value().startswith(_PLACEHOLDER):
            raise ValueError(
                f"{env_name(name)} is still the {_PLACEHOLDER}... placeholder from "
                f".env.example; make a real one with `{_RANDOM_VALUE_COMMAND}`"
            )


_SECRET_FIELDS = frozenset({"redis_password", "s3_access_key_id", "s3_secret_access_key"})
_SECRET_FIELDS |= {"review_users", "review_secret_key"}


def explain(exc: ValidationError) -> str:
    """One line per bad variable: its name, what is wrong, and the value unless secret."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = env_name(field) if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        shown = ""
        if field and field not in _SECRET_FIELDS and error["type"] != "missing":
            shown = f" (got {mask_url(str(error['input']))!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def mask_url(value: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``; anything else unchanged."""
    parts = urlsplit(value)
    if not parts.password:
        return value
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def with_password(url: str, password: SecretStr | None) -> str:
    if password is None:
        return url
    parts = urlsplit(url)
    user = parts.username or ""
    # Percent-encoded: a password with '/', '@', '#', '?' or '%' would otherwise end the userinfo
    # early (and a parse error would print the rest of it). kombu and redis-py decode it.
    netloc = f"{user}:{quote(password.get_secret_value(), safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
