"""``labeler status``: is the stack whole, what is it doing, and what comes next."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from labeler.cli_common import broker_problem, settings_or_exit
from labeler.stack_record import read_record
from labeler.status import StackStatus, probe


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: LABELER_DATA_DIR.")
@click.option(
    "--component",
    "components",
    multiple=True,
    metavar="NAME=URL",
    help="A component's base URL (it serves /healthz there), for a stack `labeler up` did not "
    "start, e.g. docker compose: inference-worker=http://localhost:9101. A NAME ending in "
    "-worker must also answer a Celery ping as node <NAME without -worker>@<host>.",
)
def status(as_json: bool, data_dir: str | None, components: tuple[str, ...]) -> None:
    """Show whether every component answers; exit 0 if all do, 1 otherwise."""
    settings = settings_or_exit(Path(data_dir) if data_dir else None)
    urls = {}
    for item in components:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise click.BadParameter(
                f"{item!r}: use NAME=http://host:port", param_hint="--component"
            )
        urls[name] = url
    record = read_record(settings.data_dir)
    if record is None and not urls:
        problem = (
            f"no `labeler up` is running on {settings.data_dir.resolve()}; start one, or name "
            "the components of another stack with --component NAME=URL"
        )
        click.echo(json.dumps({"ok": False, "error": problem}) if as_json else problem)
        sys.exit(1)
    if record is not None and (settings.private_redis or broker_problem(settings) is not None):
        settings = settings.model_copy(update={"broker_url": record.broker_url})
    report = probe(settings, record, urls)
    click.echo(report.to_json() if as_json else _text(report))
    sys.exit(0 if report.ok else 1)


def _text(s: StackStatus) -> str:
    lines = [
        f"{'OK' if s.ok else 'DEGRADED'}  ({s.source})",
        f"broker     {s.broker_url}: {s.broker}",
    ]
    if s.event_source is not None:
        e = s.event_source
        backlog = f": {e.waiting} waiting, {e.in_flight} in flight" if e.reachable else ""
        lines.append(f"events     SQS {e.queue_url} at {e.endpoint_url}: {e.detail}{backlog}")
    for c in s.components:
        extra = f", {c.restarts} restarts (last {c.last_exit})" if c.restarts else ""
        lines.append(f"  {'up  ' if c.up else 'DOWN'} {c.name:<17} {c.detail}{extra}")
    for queue, depth in s.queues.items():
        lines.append(
            f"queue      {queue}: {depth['waiting']} waiting, {depth['reserved']} reserved"
        )
    if s.review_pending is not None:
        k = s.review_kinds
        detail = (
            f" ({k['low_confidence']} low-confidence labels, {k['audits']} blind audits, "
            f"{k['label_issues']} label issues)"
            if k
            else ""
        )
        lines.append(f"review     {s.review_pending} records waiting for a reviewer{detail}")
    if s.images:
        shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(s.images.items()))
        lines.append(f"images     {shown} (since the workers started)")
    if s.last_minute is not None:
        window = s.last_minute.get("window_seconds", 0)
        counts = {k: v for k, v in s.last_minute.items() if k != "window_seconds"}
        shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"
        lines.append(f"           {shown} in the last {window} s")
    if s.model:
        lines.append(
            f"model      {s.model['name']} v{s.model['version']} in production since "
            f"{s.model['promoted_at']} ({s.model['source']})"
        )
    else:
        lines.append(
            "model      none in production yet (`labeler retrain` or `labeler models import`)"
        )
    if s.label_quality and s.model:  # no model yet: nothing labeled automatically
        lines += _quality_lines(s.label_quality)
    if s.last_retrain:
        r = s.last_retrain
        lines.append(
            f"retrain    last: v{r['version']} {r['outcome']}, {_age(r['age_seconds'])} ago"
        )
    if any(s.retrains.values()):
        shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(s.retrains.items()) if n)
        lines.append(f"           since the workers started: {shown}")
    if s.next_retrain:
        n = s.next_retrain
        lines.append(
            f"           next: {n['at']} (in {_age(n['in_seconds'])}; cron {n['cron']!r} UTC)"
        )
    return "\n".join(lines)


def _quality_lines(q: dict[str, Any]) -> list[str]:
    """The audited precision of automatic labels, and what to do about a class under target."""
    auto, version = q["auto"], q["model_version"]
    if auto["precision"] is None:
        measured = f"not measured yet ({auto['labels']:,} labels, no decided audits)"
    else:
        measured = (
            f"precision {auto['precision']:.3f} [{auto['low']:.3f}, {auto['high']:.3f}], "
            f"{auto['audited']:,} audited of {auto['labels']:,}"
        )
    lines = [f"automatic labels (v{version}): {measured}"]
    reviewed = q["reviewed"]
    if reviewed["reviewed"]:
        lines.append(
            f"           reviewed low-confidence labels: agreement {reviewed['agreement']:.3f} "
            f"over {reviewed['reviewed']:,} (not the precision of automatic labels)"
        )
    for label in q["below_target"]:
        entry = auto["by_class"][label]
        now = q.get("thresholds", {}).get(label)
        lines.append(
            f"           class {label!r}: precision at most {entry['high']:.3f} "
            f"({entry['audited']} audits) < target {q['target']:.3f}: raise its threshold"
            + (f" (now {now:.3f})" if now is not None else "")
            + " — retrain (the audit corrections are in training/) or raise "
            "LABELER_AUTO_LABEL_TARGET_PRECISION"
        )
    return lines


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
