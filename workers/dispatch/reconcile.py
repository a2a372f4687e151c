"""The reconciliation scan: objects in ``incoming/`` whose record is missing or older.

Both listings come sorted by key, so they are walked side by side, one chunk of ``incoming/``
at a time: memory is bounded by the chunk whatever the bucket holds, and a pass costs about
one LIST request per 1,000 objects in each area, with no per-object request but for the
records below.

A label key is the source key plus ``.json``, which does not keep the order ("a.b" sorts
after "a", but "a.b.json" before "a.json"). So each chunk asks the labels listing for the span
of its own label keys, and a cursor that went past the start of that span is opened again.

Listings may give whole seconds (S3, moto), so a record stamped in its object's second cannot be
ordered by time. Such a pair is settled by content, once: the record is read (one GET) and its
``source_etag`` compared with the object's ETag; a current record is written back unchanged
(compare-and-set), which stamps it in a later second so later passes need not read it again
(a pass run in that same second only re-stamps it in the same second again).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from storage import (
    AccessDenied,
    LabelRecord,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    WriteConflict,
)
from storage.keys import label_key


@dataclass
class PassStats:
    """What one pass did about records whose time could not tell (see the module docstring)."""

    verified: int = 0  # ambiguous records read and compared with their object
    restamped: int = 0  # of those, found current and written back in a later second


class Reconciler:
    """Walks ``incoming`` and ``labels`` together; see the module docstring."""

    def __init__(self, incoming: ObjectStore, labels: ObjectStore, chunk: int = 1000) -> None:
        if chunk < 1:
            raise ValueError("the reconciliation chunk must be at least 1")
        self._incoming = incoming
        self._labels = labels
        self._chunk = chunk
        self.stats = PassStats()  # of the pass under way, or the last one

    def chunks(self) -> Iterator[list[ObjectInfo]]:
        """One pass: for each chunk listed, the objects to send (often none); their ``etag``
        is empty where the listing did not give it for free (a local directory).

        Raises:
            StorageError: from either store; the pass is over, start a new one later.
        """
        self.stats = PassStats()
        listing = iter(self._incoming.list(etags=False))
        records = _RecordCursor(self._labels)
        while chunk := list(itertools.islice(listing, self._chunk)):
            stamps = records.stamps([label_key(info.key) for info in chunk], chunk[0].key)
            yield [info for info in chunk if self._outdated(info, stamps.get(label_key(info.key)))]

    def _outdated(self, info: ObjectInfo, record_written: float | None) -> bool:
        """No record, one written before the object was (re-)uploaded, or an ambiguous one
        whose content says so."""
        if record_written is None or record_written < info.last_modified:
            return True
        # Either listing may be floored to the second: only a record whose whole second is past
        # the object's time is newer for sure, whatever the precision of each.
        if math.floor(record_written) > info.last_modified:
            return False
        return not self._current(info)

    def _current(self, info: ObjectInfo) -> bool:
        """Whether the record answers the object's content; if so it is re-stamped."""
        key = label_key(info.key)
        try:
            blob = self._labels.get(key)
            etag = LabelRecord.model_validate_json(blob.data).source_etag
        except (ObjectNotFound, ValidationError):
            return False  # gone or damaged since the listing: label again
        self.stats.verified += 1
        if etag != (info.etag or self._etag_now(info.key)):  # a local listing has no ETags
            return False
        try:
            self._labels.put(
                key, blob.data, content_type="application/json", if_match=blob.info.etag
            )
        except (WriteConflict, AccessDenied):
            # Rewritten meanwhile (a label, a review), or no write access: the next pass reads it.
            return True
        self.stats.restamped += 1
        # A re-upload since the listing would now look older than the record: make sure of none.
        return self._etag_now(info.key) in (etag, None)  # None: deleted, nothing to label

    def _etag_now(self, key: str) -> str | None:
        try:
            return self._incoming.head(key).etag
        except ObjectNotFound:
            return None  # deleted since the listing


class _RecordCursor:
    """A forward-only walk over the labels listing, with one entry of look-ahead."""

    def __init__(self, labels: ObjectStore) -> None:
        self._labels = labels
        self._listing: Iterator[ObjectInfo] | None = None
        self._peek: ObjectInfo | None = None
        self._last: str | None = None  # the last label key consumed

    def stamps(self, wanted: list[str], floor: str) -> dict[str, float]:
        """``last_modified`` of the records among ``wanted``; ``floor`` sorts before them all."""
        low, high, wanted_set = min(wanted), max(wanted), set(wanted)
        if self._listing is None or (self._last is not None and self._last >= low):
            self._listing = iter(self._labels.list(start_after=floor, etags=False))
            self._peek, self._last = None, None
        found: dict[str, float] = {}
        while True:
            if self._peek is None:
                self._peek = next(self._listing, None)
                if self._peek is None:
                    return found  # no more records
            if self._peek.key > high:
                return found  # it belongs to a later chunk: keep it
            info, self._peek = self._peek, None
            self._last = info.key
            if info.key in wanted_set:
                found[info.key] = info.last_modified
