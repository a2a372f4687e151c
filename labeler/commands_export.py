"""``labeler export``: labels out as a JSON Lines manifest, a CSV, or an image folder."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import click

from labeler.cli_common import settings_or_exit
from labeler.settings import Settings
from labeler.wiring import Stores
from storage import Area, LabelerError, make_s3_client, open_store

if TYPE_CHECKING:
    from workers.export import Destination, ExportCounts

_PROGRESS_SECONDS = 1.0  # how often the terminal line is redrawn
_SKIPPED = {"no_class": "an error or a discarded image", "image_missing": "the image is gone"}


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "imagefolder"]),
    required=True,
    help="jsonl: Ground Truth style manifest; csv: the same flattened; imagefolder: "
    "<out>/<class>/<key> plus metadata.jsonl.",
)
@click.option(
    "--out", required=True, help="A local path, or s3://bucket/prefix/... on the S3 endpoint."
)
@click.option("--prefix", default="", help="Only objects whose key starts with this.")
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    help="Only labels at least this confident (a person's class counts as 1.0).",
)
@click.option("--reviewed-only", is_flag=True, help="Only records a person decided.")
@click.option(
    "--since",
    help="Only records written or changed since then: ISO 8601 (2024-05-01, "
    "2024-05-01T12:00:00+02:00; UTC when no zone) or seconds since the epoch.",
)
def export(
    fmt: str,
    out: str,
    prefix: str,
    min_confidence: float | None,
    reviewed_only: bool,
    since: str | None,
) -> None:
    """Export the labels (streamed; the output appears whole or not at all)."""
    from workers.export import ExportFilter, ExportFormat, LabelExporter

    settings = settings_or_exit()
    stores = Stores(settings)
    keep = ExportFilter(prefix, min_confidence, reviewed_only, _parse_since(since))
    exporter = LabelExporter(stores.area(Area.LABELS), stores.area(Area.INCOMING))
    destination = _destination(settings, out, ExportFormat(fmt))
    progress = _terminal_progress() if sys.stderr.isatty() else None
    try:
        counts = exporter.export(ExportFormat(fmt), destination, keep, progress)
    except LabelerError as exc:
        raise click.ClickException(str(exc)) from None
    if progress is not None:
        click.echo(err=True)
    click.echo(_summary(counts, destination))


def _parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use ISO 8601 (2024-05-01T12:00:00) or seconds since the epoch",
            param_hint="--since",
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _destination(settings: Settings, out: str, fmt: object) -> Destination:
    """``--out`` as a local path or a key in an S3 store on the configured endpoint."""
    from workers.export import Destination, ExportFormat

    parts = urlsplit(out)
    if parts.scheme == "file":
        return Destination(unquote(parts.path))
    if parts.scheme != "s3":
        return Destination(str(Path(out).expanduser()))
    path = unquote(parts.path).strip("/")
    client = make_s3_client(settings.s3_options())
    folder, name = (path, "") if fmt is ExportFormat.IMAGEFOLDER else _split(out, path)
    try:
        store = open_store(f"s3://{parts.netloc}/{folder}", s3_client=client)
    except LabelerError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    return Destination(name, store)


def _split(out: str, path: str) -> tuple[str, str]:
    folder, _, name = path.rpartition("/")
    if not name:
        raise click.BadParameter(
            f"{out!r}: name the object, s3://bucket/[prefix/]file", param_hint="--out"
        )
    return folder, name


def _terminal_progress() -> Callable[[ExportCounts], None]:
    last = [0.0, time.monotonic()]

    def show(counts: ExportCounts) -> None:
        now = time.monotonic()
        if now - last[0] < _PROGRESS_SECONDS:
            return
        last[0] = now
        rate = counts.read / max(now - last[1], 1e-9)
        line = f"read {counts.read:,} records, exported {counts.kept:,} ({rate:,.0f}/s)"
        click.echo(f"\r{line:<78}", nl=False, err=True)

    return show


def _summary(counts: ExportCounts, destination: Destination) -> str:
    parts = [f"exported {counts.kept} records to {destination}"]
    if counts.errors:
        parts.append(f"{counts.errors} of them error records")
    if counts.filtered:
        parts.append(f"{counts.filtered} left out by the filters")
    if counts.unreadable:
        parts.append(f"{counts.unreadable} objects in labels/ were not records")
    for why, n in sorted(counts.skipped.items()):
        parts.append(f"{n} got no image file ({_SKIPPED.get(why, why)})")
    return "; ".join(parts)
