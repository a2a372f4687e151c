"""``labeler retrain``, ``labeler beat`` and ``labeler report``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from labeler.cli_common import broker_or_exit, find_broker, settings_or_exit
from labeler.wiring import Stores, build_app
from storage import Area
from storage.keys import report_key
from tasks.contracts import CHECK_LABELS, RETRAIN, TRAINING_QUEUE


@click.command()
@click.option("--wait", is_flag=True, help="Show live progress until the run finishes.")
@click.option("--timeout", default=7200.0, show_default=True, help="Seconds to wait at most.")
def retrain(wait: bool, timeout: float) -> None:
    """Queue a retrain now (it runs on a `labeler worker --queues training`)."""
    settings = settings_or_exit()
    settings = broker_or_exit(settings)
    app = build_app(settings)
    result = app.send_task(RETRAIN, kwargs={"payload": {"reason": "cli"}}, queue=TRAINING_QUEUE)
    click.echo(f"retrain queued (task {result.id})")
    if not wait:
        return
    outcome = _follow(result, timeout)
    click.echo(json.dumps(outcome, indent=2))
    if outcome.get("outcome") not in ("promoted", "refused", "skipped_locked"):
        raise SystemExit(1)


@click.command("check-labels")
@click.option("--wait", is_flag=True, help="Show progress until the search finishes.")
@click.option("--timeout", default=7200.0, show_default=True, help="Seconds to wait at most.")
def check_labels(wait: bool, timeout: float) -> None:
    """Queue a search for likely label errors in training/ (on a training worker); what it finds
    goes to the review queue, never moved without a person."""
    settings = broker_or_exit(settings_or_exit())
    app = build_app(settings)
    result = app.send_task(
        CHECK_LABELS, kwargs={"payload": {"reason": "cli"}}, queue=TRAINING_QUEUE
    )
    click.echo(f"label check queued (task {result.id})")
    if not wait:
        return
    outcome = _follow(result, timeout)
    click.echo(json.dumps(outcome, indent=2))
    if outcome.get("outcome") != "checked":
        raise SystemExit(1)


def _follow(result: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last, last_phase = "", None
    while not result.ready():
        if time.monotonic() > deadline:
            raise click.ClickException(f"still running after {timeout}s (task {result.id})")
        info = result.info if isinstance(result.info, dict) else {}
        if last_phase is not None and info.get("phase") != last_phase:
            click.echo()  # a finished phase keeps its last line on screen
        last_phase = info.get("phase")
        line = _progress_line(result.state, info)
        if line != last:
            click.echo(f"\r{line:<100}", nl=False)
            last = line
        time.sleep(0.5)
    click.echo()
    if not result.successful():
        raise click.ClickException(f"retrain failed: {result.result!r}")
    outcome: dict[str, Any] = result.result
    return outcome


def _progress_line(state: str, info: dict[str, Any]) -> str:
    if "total" in info:  # the cache phase: fetched and decoded, reused from cache, undecodable
        done, total = info["fetched"] + info["reused"], max(int(info["total"]), 1)
        counts = ", ".join(f"{k} {info[k]}" for k in ("fetched", "reused", "failed"))
        return f"{info['phase']} [{_bar(done, total)}] {done}/{info['total']} images: {counts}"
    if "epoch" not in info:
        return f"{state.lower()}: {info.get('phase', 'waiting for a training worker')}"
    done, total = int(info["epoch"]), int(info["epochs"])
    bar = _bar(done, total)
    figures = " ".join(
        f"{k} {info[k]:.4f}" for k in ("loss", "accuracy", "val_accuracy") if k in info
    )
    return f"{info['phase']:<9} [{bar}] epoch {done}/{total} {figures}"


def _bar(done: int, total: int) -> str:
    filled = 20 * done // total
    return "#" * filled + "-" * (20 - filled)


@click.command()
def beat() -> None:
    """Run celery beat: queues the retrain on LABELER_RETRAIN_CRON (UTC)."""
    settings = find_broker(settings_or_exit())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    app.start(
        [
            "beat",
            f"--loglevel={settings.log_level}",
            f"--schedule={settings.data_dir.resolve() / 'celerybeat-schedule'}",
        ]
    )


@click.command()
@click.argument("version", required=False, type=click.IntRange(min=1))
def report(version: int | None) -> None:
    """Summarise the evaluation of VERSION (default: production) and say where its report is."""
    settings = settings_or_exit()
    stores = Stores(settings)
    registry = stores.registry()
    if version is None:
        alias = registry.production()
        if alias is None:
            raise click.ClickException("no production model yet")
        version = alias.version
    reports = stores.area(Area.REPORTS)
    key = report_key(registry.name, version, "evaluation.json")
    if not reports.exists(key):
        raise click.ClickException(f"no report for {registry.name} v{version} at {reports.uri}")
    document = json.loads(reports.get(key).data)
    evaluation = document["evaluation"]
    click.echo(
        f"{registry.name} v{version}: accuracy {evaluation['accuracy']:.4f}, "
        f"macro F1 {evaluation['macro_f1']:.4f}"
    )
    click.echo(f"gate: {'passed' if document['gate']['passed'] else 'refused'}")
    for check in document["gate"]["checks"]:
        click.echo(f"  {'ok  ' if check['passed'] else 'FAIL'} {check['name']}: {check['detail']}")
    click.echo(f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
    for name, f in evaluation["per_class"].items():
        click.echo(
            f"{name:>12} {f['precision']:9.3f} {f['recall']:7.3f} "
            f"{f['f1-score']:6.3f} {int(f['support']):7d}"
        )
    click.echo(f"report: {reports.uri}/{report_key(registry.name, version, 'report.html')}")
