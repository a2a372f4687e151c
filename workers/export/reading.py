"""Stream the records of ``labels/`` as export rows: listed lazily, read a chunk at a time by a few
threads, filtered, in key order. Memory is one chunk, whatever the store holds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from storage import LabelRecord, ObjectInfo, ObjectNotFound, ObjectStore, source_key
from workers.export.rows import ExportRow, export_row

_CHUNK = 256  # records read concurrently, then yielded in order; bounds memory and latency
_THREADS = 8  # an S3 GET is ~10 ms of waiting: enough in flight to keep the writer busy


@dataclass(frozen=True)
class ExportFilter:
    """Which records an export keeps.

    Args:
        prefix: Only source keys starting with this.
        min_confidence: Only labels at least this confident (a person's class counts as 1.0);
            error and discarded records have no confidence and are left out.
        reviewed_only: Only records a person decided.
        since: Only records written or changed at or after this time (seconds since the epoch),
            judged from the listing, so older ones are never read.
    """

    prefix: str = ""
    min_confidence: float | None = None
    reviewed_only: bool = False
    since: float | None = None

    def keeps(self, row: ExportRow) -> bool:
        if self.reviewed_only and not row.human_annotated:
            return False
        if self.min_confidence is not None:
            return row.confidence is not None and row.confidence >= self.min_confidence
        return True


@dataclass
class ExportCounts:
    """How far an export got: records read, kept (written), left out, unreadable."""

    read: int = 0
    kept: int = 0
    filtered: int = 0
    errors: int = 0  # error records kept (an input that got no label)
    unreadable: int = 0  # objects in labels/ that are not records
    skipped: dict[str, int] = field(default_factory=dict)  # imagefolder: why a file is missing

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


Progress = Callable[[ExportCounts], None]


def export_rows(
    labels: ObjectStore,
    incoming_uri: str,
    keep: ExportFilter,
    counts: ExportCounts,
    progress: Progress | None = None,
) -> Iterator[ExportRow]:
    """The kept rows of every record under ``keep.prefix``, in source-key order.

    Updates ``counts`` as it goes and calls ``progress`` after each chunk.
    """
    infos = (
        info
        for info in labels.list(keep.prefix, etags=False)
        if keep.since is None or info.last_modified >= keep.since
    )
    with ThreadPoolExecutor(_THREADS, thread_name_prefix="export-read") as pool:
        while chunk := list(islice(infos, _CHUNK)):
            for row in pool.map(lambda info: _read_row(labels, info, incoming_uri), chunk):
                counts.read += 1
                if row is None:
                    counts.unreadable += 1
                elif keep.keeps(row):
                    counts.kept += 1
                    counts.errors += row.error is not None
                    yield row
                else:
                    counts.filtered += 1
            if progress is not None:
                progress(counts)


def _read_row(labels: ObjectStore, info: ObjectInfo, incoming_uri: str) -> ExportRow | None:
    """The row of one record, or None when the object is gone or not a record."""
    try:
        source_key(info.key)
        raw = json.loads(labels.get(info.key).data)
        # ``audit`` is read from the JSON itself, so it is exported whether or not this
        # version's LabelRecord declares the field.
        audit = bool(raw.get("audit", False)) if isinstance(raw, dict) else False
        record = LabelRecord.model_validate(raw)
    except (ObjectNotFound, ValueError):
        return None
    return export_row(record, incoming_uri, audit=audit)
