"""Where an export goes, written so a reader sees the old output or the whole new one.

A local file is written under a temporary name beside it, then renamed; a local image folder is
built in a temporary folder beside it, then renamed. On an object store one PUT (multipart for a
big file) is already atomic; an image folder there gets its ``metadata.jsonl`` last, so a reader
that waits for it sees every image it lists.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from storage import LocalStore, ObjectNotFound, ObjectStore, PermanentError, S3Store, validate_key
from workers.export.reading import ExportCounts
from workers.export.rows import (
    CSV_COLUMNS,
    ExportRow,
    csv_row,
    imagefolder_line,
    imagefolder_path,
    json_line,
    manifest_line,
)

METADATA_FILE = "metadata.jsonl"


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    IMAGEFOLDER = "imagefolder"


class ExportError(PermanentError):
    """The export cannot be written as asked (the output exists, a bad destination...)."""


@dataclass(frozen=True)
class Destination:
    """A local path, or a key in an object store (``store`` set, ``path`` is then the key)."""

    path: str
    store: ObjectStore | None = None

    def __str__(self) -> str:
        if self.store is None:
            return self.path
        return f"{self.store.uri.rstrip('/')}/{self.path}".rstrip("/")


def write_manifest(rows: Iterator[ExportRow], fmt: ExportFormat, out: Destination) -> None:
    """Write the rows as JSON Lines or CSV to ``out``, atomically."""
    with _spooled_file(out) as f:
        if fmt is ExportFormat.CSV:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                writer.writerow(csv_row(row))
        else:
            for row in rows:
                f.write(json_line(manifest_line(row)))


def write_imagefolder(
    rows: Iterator[ExportRow], incoming: ObjectStore, out: Destination, counts: ExportCounts
) -> None:
    """``<out>/<class>/<source key>`` for every labeled row, then ``<out>/metadata.jsonl``.

    Images are hard links where both sides are local (same file system), copies otherwise.
    Error and discarded rows have no class, and an image gone since it was labeled has no
    file: each is counted in ``counts.skipped``, not written.
    """
    if out.store is not None:
        _imagefolder_to_store(rows, incoming, out.store, out.path, counts)
        return
    final = Path(out.path)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ExportError(f"{final} exists: an image folder is written to a new or empty folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.{uuid.uuid4().hex}.part"
    try:
        work.mkdir()
        with (work / METADATA_FILE).open("w", encoding="utf-8") as meta:
            for row in rows:
                if _place_local(row, incoming, work, counts):
                    meta.write(json_line(imagefolder_line(row)))
            meta.flush()
            os.fsync(meta.fileno())
        with contextlib.suppress(FileNotFoundError):
            final.rmdir()  # the empty folder the check above allowed
        os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _place_local(row: ExportRow, incoming: ObjectStore, work: Path, counts: ExportCounts) -> bool:
    if not row.labeled:
        counts.skip("no_class")
        return False
    target = work / imagefolder_path(row)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(incoming, LocalStore):
        source = incoming.root / validate_key(row.source_key)
        try:
            os.link(source, target)
            return True
        except FileNotFoundError:
            counts.skip("image_missing")
            return False
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    try:
        data = incoming.get(row.source_key).data
    except ObjectNotFound:
        counts.skip("image_missing")
        return False
    target.write_bytes(data)
    return True


def _imagefolder_to_store(
    rows: Iterator[ExportRow],
    incoming: ObjectStore,
    store: ObjectStore,
    root: str,
    counts: ExportCounts,
) -> None:
    base = f"{root.strip('/')}/" if root.strip("/") else ""
    with _spooled_file(Destination(base + METADATA_FILE, store)) as meta:
        for row in rows:
            if not row.labeled:
                counts.skip("no_class")
                continue
            try:
                blob = incoming.get(row.source_key)
            except ObjectNotFound:
                counts.skip("image_missing")
                continue
            store.put(base + imagefolder_path(row), blob.data)
            meta.write(json_line(imagefolder_line(row)))


@contextmanager
def _spooled_file(out: Destination) -> Iterator[IO[str]]:
    """A text file to write; on a clean exit it becomes ``out`` in one step, else vanishes."""
    if out.store is None:
        final = Path(out.path)
        if final.is_dir():
            raise ExportError(f"{final} is a folder: name the file to write")
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.parent / f".{final.name}.{uuid.uuid4().hex}.part"
    else:
        validate_key(out.path)
        fd, name = tempfile.mkstemp(prefix="labeler-export-", suffix=".part")
        os.close(fd)
        work = Path(name)
    try:
        with work.open("w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if out.store is None:
            os.replace(work, out.path)
        else:
            _upload(work, out.store, out.path)
    finally:
        work.unlink(missing_ok=True)


def _upload(path: Path, store: ObjectStore, key: str) -> None:
    """Send a finished file: streamed in parts to S3, in one write to any other store."""
    if isinstance(store, S3Store):
        store.put_file(key, path)
    else:
        store.put(key, path.read_bytes())
