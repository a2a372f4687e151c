"""``labeler relabel``: re-score records with the production version by hand, and the relabel a
promotion queues (LABELER_RELABEL_ON_PROMOTE)."""

from __future__ import annotations

import time
from typing import Any

import click

from labeler.cli_common import broker_or_exit, broker_problem, find_broker, settings_or_exit
from labeler.settings import Settings, env_name
from labeler.wiring import Stores, build_app, review_policy
from storage import Area
from tasks.contracts import RelabelScope


@click.command()
@click.argument("prefix", default="")
@click.option("--pending-only", is_flag=True, help="Only records waiting for review.")
@click.option("--wait", is_flag=True, help="Show progress until every record is done.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait at most.")
@click.option("--model-version", type=click.IntRange(min=1), help="Default: production.")
def relabel(
    prefix: str, pending_only: bool, wait: bool, timeout: float, model_version: int | None
) -> None:
    """Re-score records under PREFIX with the production version, in the background.

    Records a person reviewed are never touched; each keeps its earlier labels in `history`.
    Without --pending-only every record no person reviewed is re-scored."""
    from tasks.relabel import send_chunks
    from workers.inference import relabel_keys
    from workers.review import ReviewQueue

    settings = broker_or_exit(settings_or_exit())
    stores = Stores(settings)
    version = model_version or _production(stores)
    queue = ReviewQueue(_redis(settings), order=review_policy(settings).order)
    labels = stores.area(Area.LABELS)
    keys = list(relabel_keys(queue, labels, prefix, pending_only=pending_only))
    if not keys:
        click.echo("nothing to re-score")
        return
    scope: RelabelScope = "pending" if pending_only else "all"
    results = send_chunks(build_app(settings), keys, version, scope)
    click.echo(f"queued {len(keys)} records in {len(results)} tasks to re-score with v{version}")
    if wait:
        _wait_for(results, len(keys), timeout)


def _production(stores: Stores) -> int:
    alias = stores.registry().production()
    if alias is None:
        raise click.ClickException("no production model: nothing to re-score with")
    return alias.version


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.broker_connection_url())


def _wait_for(results: list[Any], total: int, timeout: float) -> None:
    totals: dict[str, int] = {}
    failed: list[str] = []
    deadline = time.monotonic() + timeout
    pending = list(results)
    with click.progressbar(length=total, label="re-scoring", show_pos=True) as bar:
        while pending and time.monotonic() < deadline:
            for result in list(pending):
                if not result.ready():
                    continue
                pending.remove(result)
                if result.successful():
                    counts = dict(result.result)
                    counts.pop("model_version", None)
                    bar.update(sum(counts.values()))
                    for name, n in counts.items():
                        totals[name] = totals.get(name, 0) + int(n)
                else:
                    failed.append(repr(result.result))
            time.sleep(0.2)
    click.echo(", ".join(f"{name.replace('_', ' ')} {n}" for name, n in sorted(totals.items())))
    if failed or pending:
        for line in failed:
            click.echo(f"task failed: {line}", err=True)
        if pending:
            click.echo(f"{len(pending)} tasks still running after {timeout}s", err=True)
        raise SystemExit(1)


def after_promotion(settings: Settings, version: int) -> None:
    """Queue the relabel a promotion asks for (LABELER_RELABEL_ON_PROMOTE), if a broker answers."""
    from tasks.relabel import request_relabel

    if settings.relabel_on_promote == "off":
        return
    found = find_broker(settings)
    problem = broker_problem(found)
    if problem is not None:
        click.echo(
            f"warning: records not re-scored ({problem}); run `labeler relabel` once the broker "
            f"is up, or set {env_name('relabel_on_promote')}=off",
            err=True,
        )
        return
    request_relabel(build_app(found), version, settings.relabel_on_promote)
    click.echo(f"queued re-scoring of the {settings.relabel_on_promote} records with v{version}")
