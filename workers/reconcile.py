"""The reconciliation scan: objects in ``incoming/`` whose record is missing or older.

Both listings come sorted by key, so they are walked side by side, one chunk of ``incoming/``
at a time: memory is bounded by the chunk whatever the bucket holds, and a pass costs about
one LIST request per 1,000 objects in each area, with no per-object request.

A label key is the source key plus ``.json``, which does not keep the order ("a.b" sorts
after "a", but "a.b.json" before "a.json"). So each chunk asks the labels listing for the span
of its own label keys, and a cursor that went past the start of that span is opened again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from storage import ObjectInfo, ObjectStore
from storage.keys import label_key


class Reconciler:
    """Walks ``incoming`` and ``labels`` together; see the module docstring."""

    def __init__(self, incoming: ObjectStore, labels: ObjectStore, chunk: int = 1000) -> None:
        if chunk < 1:
            raise ValueError("the reconciliation chunk must be at least 1")
        self._incoming = incoming
        self._labels = labels
        self._chunk = chunk

    def chunks(self) -> Iterator[list[ObjectInfo]]:
        """One pass: for each chunk listed, the objects to send (often none); their ``etag``
        is empty where the listing did not give it for free (a local directory).

        Raises:
            StorageError: from either listing; the pass is over, start a new one later.
        """
        listing = iter(self._incoming.list(etags=False))
        records = _RecordCursor(self._labels)
        while chunk := list(itertools.islice(listing, self._chunk)):
            stamps = records.stamps([label_key(info.key) for info in chunk], chunk[0].key)
            yield [info for info in chunk if _outdated(info, stamps.get(label_key(info.key)))]


def _outdated(info: ObjectInfo, record_written: float | None) -> bool:
    """No record, or one written before the object was (re-)uploaded."""
    return record_written is None or record_written < info.last_modified


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
