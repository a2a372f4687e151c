"""Label records as the worker writes them, for tests that need a store of labels."""

from __future__ import annotations

from storage import LabelRecord, ObjectStore


def record_for(store: ObjectStore, key: str, etag: str | None = None) -> bytes:
    """A record for ``key`` answering ``etag``, by default its object's current ETag."""
    record = LabelRecord(
        source_key=key,
        source_etag=etag or store.head(key).etag,
        model_name="digits",
        model_version=1,
        label="3",
        score=0.9,
        created_at=0.0,
    )
    return record.model_dump_json(exclude_none=True).encode()
