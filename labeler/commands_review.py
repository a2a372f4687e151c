"""``labeler review``: the review app, its index rebuild, and reviewer password hashes."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from labeler.cli_common import broker_or_exit, settings_or_exit
from labeler.settings import Settings, env_name
from labeler.wiring import Stores, review_policy
from storage import Area, LabelRecord, ObjectNotFound

if TYPE_CHECKING:
    from monitoring.metrics import ReviewMetrics
    from review import Reviewers
    from workers.review import QualityLedger, ReviewDesk, ReviewQueue

_CLASSES_TTL_SECONDS = 60.0  # how stale the page's class list may be after a promotion


@click.group(invoke_without_command=True)
@click.option("--host", help="Listen address. Default: LABELER_REVIEW_HOST (127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Default: LABELER_REVIEW_PORT.")
@click.pass_context
def review(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the review app (people confirm or correct low-confidence labels)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_or_exit()
    serve_review(settings, host or settings.review_host, port or settings.review_port)


@review.command()
def reindex() -> None:
    """Rebuild the review queue from labels/ (after restoring Redis, or for old records)."""
    settings = settings_or_exit()
    broker_or_exit(settings)
    queue = review_queue(settings)
    labels = Stores(settings).area(Area.LABELS)

    def records() -> Any:
        for info in labels.list():
            try:
                yield LabelRecord.model_validate_json(labels.get(info.key).data)
            except (ObjectNotFound, ValueError):
                continue  # deleted while we walked, or not a record: nothing to review

    count = queue.rebuild(records())
    click.echo(f"{count} records wait for review")


@review.command("hash-password")
@click.argument("name")
@click.password_option()
def hash_password_command(name: str, password: str) -> None:
    """Print a `NAME:scrypt$...` line for LABELER_REVIEW_USERS or the users file."""
    from review import hash_password

    click.echo(f"{name}:{hash_password(password)}")


@review.command("gen-secret")
def gen_secret() -> None:
    """Print a random key for LABELER_REVIEW_SECRET_KEY."""
    import secrets

    click.echo(secrets.token_urlsafe(48))


def serve_review(settings: Settings, host: str, port: int) -> None:
    """Check the address against the credentials, build the app, run uvicorn until stopped."""
    import uvicorn

    reviewers = load_reviewers(settings)
    if not reviewers and not _loopback(host):
        raise click.ClickException(
            f"refusing to serve the review app on {host} without reviewer credentials: set "
            f"{env_name('review_users')} or {env_name('review_users_file')} (make entries with "
            f"`labeler review hash-password NAME`), or listen on 127.0.0.1"
        )
    _check_secret_key(settings, reviewers)
    broker_or_exit(settings)
    app = build_review_app(settings, reviewers)
    who = f"{len(reviewers)} reviewers" if reviewers else "no sign-in (local only)"
    click.echo(f"review app on http://{host}:{port}/ ({who})")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # X-Forwarded-For/-Proto are believed from these hops only: the client address that
        # sign-in throttling counts, and https (Secure cookies) behind a TLS proxy.
        proxy_headers=True,
        forwarded_allow_ips=settings.review_trusted_proxies,
    )


def _check_secret_key(settings: Settings, reviewers: Reviewers) -> None:
    """A configured key that anyone could guess is refused (unset: random per start)."""
    from review import KEY_COMMAND, weak_secret

    key = settings.review_secret_key
    problem = weak_secret(key.get_secret_value()) if key is not None else None
    if reviewers and problem is not None:
        raise click.ClickException(
            f"{env_name('review_secret_key')} {problem}: make a real one with "
            f"`labeler review gen-secret` or `{KEY_COMMAND}`"
        )


def load_reviewers(settings: Settings) -> Reviewers:
    from review import InvalidCredentials, Reviewers

    lines: list[str] = []
    if settings.review_users is not None:
        lines += settings.review_users.get_secret_value().split(",")
    try:
        if settings.review_users_file is not None:
            lines += Path(settings.review_users_file).read_text().splitlines()
        return Reviewers.parse(lines, "reviewer credentials")
    except OSError as exc:
        raise click.ClickException(
            f"cannot read {env_name('review_users_file')} ({exc.strerror})"
        ) from None
    except InvalidCredentials as exc:
        raise click.ClickException(str(exc)) from None


def build_review_app(settings: Settings, reviewers: Reviewers) -> Any:
    """The review ASGI app over this deployment's stores and Redis."""
    from prometheus_client import CollectorRegistry

    from monitoring.metrics import AuditMetrics, ReviewMetrics
    from review import ReviewConfig, create_app
    from workers.inference import configure_pillow

    configure_pillow(settings.max_image_pixels)  # previews decode untrusted bytes too
    registry = CollectorRegistry()
    metrics = ReviewMetrics(registry)
    desk = review_desk(settings, metrics)
    quality = quality_reader(settings, Stores(settings))
    AuditMetrics(registry, quality)
    secret = settings.review_secret_key
    config = ReviewConfig(
        reviewers=reviewers,
        secret_key=secret.get_secret_value() if secret else "",
        classes=_class_list(Stores(settings)),
        max_pixels=settings.max_image_pixels,
        secure_cookies=settings.review_secure_cookies,
        metrics=lambda: _scrape(desk.queue, metrics, registry),
        label_quality=quality,
    )
    return create_app(desk, config)


def review_queue(settings: Settings) -> ReviewQueue:
    from workers.review import ReviewQueue

    policy = review_policy(settings)
    return ReviewQueue(_redis(settings), lease_seconds=policy.lease_seconds, order=policy.order)


def quality_ledger(settings: Settings) -> QualityLedger:
    from workers.review import QualityLedger

    return QualityLedger(_redis(settings))


def quality_reader(settings: Settings, stores: Stores) -> Any:
    """A callable giving the ``label_quality`` object of the production version."""
    from workers.review import label_quality

    ledger = quality_ledger(settings)

    def read() -> dict[str, Any]:
        alias = stores.registry().production()
        version = alias.version if alias else None
        return label_quality(ledger, version, settings.auto_label_target_precision)

    return read


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(
        settings.broker_connection_url(), socket_connect_timeout=5, socket_timeout=10
    )


def review_desk(settings: Settings, metrics: ReviewMetrics | None = None) -> ReviewDesk:
    from workers.review import ReviewDesk

    stores = Stores(settings)

    def decided(predicted: str, outcome: Any) -> None:
        if metrics is not None:
            metrics.reviews.labels(outcome.value).inc()

    return ReviewDesk(
        stores.area(Area.INCOMING),
        stores.area(Area.LABELS),
        stores.area(Area.TRAINING),
        review_queue(settings),
        on_decided=decided,
        ledger=quality_ledger(settings),
    )


def _scrape(queue: ReviewQueue, metrics: ReviewMetrics, registry: Any) -> bytes:
    """The exposition, with the index-backed gauges refreshed first."""
    from prometheus_client import generate_latest

    from workers.review import agreement_of

    metrics.pending.set(queue.pending())
    for label, value in agreement_of(queue.tallies()).items():
        metrics.agreement.labels(label).set(value)
    return generate_latest(registry)


def _class_list(stores: Stores) -> Any:
    """The production model's classes, re-read at most once a minute."""
    cache: dict[str, Any] = {"at": 0.0, "classes": []}

    def classes() -> list[str]:
        if time.monotonic() - cache["at"] > _CLASSES_TTL_SECONDS:
            registry = stores.registry()
            alias = registry.production()
            # No model yet: the page still works; corrections are typed.
            cache["classes"] = registry.metadata(alias.version).class_names if alias else []
            cache["at"] = time.monotonic()
        return list(cache["classes"])

    return classes


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
