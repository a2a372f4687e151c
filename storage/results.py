"""Reading and writing label records in the labels store."""

from __future__ import annotations

from pydantic import ValidationError

from storage.base import ObjectStore
from storage.errors import ObjectNotFound
from storage.keys import label_key
from storage.records import LabelRecord


class LabelStore:
    """``labels/<source key>.json``: one record per input object."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def read(self, source_key: str) -> LabelRecord | None:
        """The record for ``source_key``, or None when there is none (or it is unreadable)."""
        try:
            data = self.store.get(label_key(source_key)).data
        except ObjectNotFound:
            return None
        try:
            return LabelRecord.model_validate_json(data)
        except ValidationError:
            return None  # a damaged record is rewritten rather than trusted

    def write(self, record: LabelRecord, *, if_new: bool = False, durable: bool = True) -> None:
        """Store ``record``; with ``if_new`` only where none is yet (``WriteConflict`` if one
        is). With ``durable=False`` it is durable after the next :meth:`sync`."""
        self.store.put(
            label_key(record.source_key),
            record.model_dump_json(exclude_none=True).encode(),
            content_type="application/json",
            if_none_match=if_new,
            durable=durable,
        )

    def sync(self) -> None:
        """Make the records written with ``durable=False`` durable."""
        self.store.sync()
