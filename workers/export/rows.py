"""One label record as an exported row: a Ground Truth manifest line, a CSV row, an ImageFolder
metadata line. Pure functions; the engine streams records through them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from storage import LabelRecord, ReviewOutcome

CSV_COLUMNS = (
    "source-ref",
    "label",
    "confidence",
    "model-name",
    "model-version",
    "human-annotated",
    "review-outcome",
    "reviewer",
    "audit",
    "creation-date",
    "error",
)


@dataclass(frozen=True, slots=True)
class ExportRow:
    """What an export says about one object, whatever the format.

    ``label`` is the reviewer's class when a person decided, else the model's; None for an error
    record and for a discarded review. ``confidence`` is 1.0 when a person gave the class.
    """

    source_key: str
    source_ref: str
    label: str | None
    confidence: float | None
    model_name: str
    model_version: int
    human_annotated: bool
    review_outcome: str | None
    reviewer: str | None
    audit: bool
    creation_date: str
    error: str | None

    @property
    def labeled(self) -> bool:
        return self.error is None and self.label is not None


def source_ref(store_uri: str, key: str) -> str:
    """The object's storage URI: ``s3://bucket/prefix/key`` or ``file:///dir/key`` (escaped)."""
    tail = quote(key) if store_uri.startswith("file:") else key
    return f"{store_uri.rstrip('/')}/{tail}"


def export_row(record: LabelRecord, store_uri: str, *, audit: bool = False) -> ExportRow:
    """The row for ``record``, whose object lives in the store at ``store_uri``.

    Args:
        record: The label record as read from ``labels/``.
        store_uri: The incoming store's URI, to name the object in ``source-ref``.
        audit: Whether the record was drawn as a blind audit sample.
    """
    review = record.review
    if review is not None:
        label = review.label if review.outcome != ReviewOutcome.DISCARDED else None
        confidence: float | None = 1.0 if label is not None else None
        made_at = review.at
    else:
        label, confidence, made_at = record.label, record.score, record.created_at
    error = record.error.reason.value if record.error is not None else None
    return ExportRow(
        source_key=record.source_key,
        source_ref=source_ref(store_uri, record.source_key),
        label=None if error else label,
        confidence=None if error else confidence,
        model_name=record.model_name,
        model_version=record.model_version,
        human_annotated=review is not None,
        review_outcome=review.outcome.value if review is not None else None,
        reviewer=review.reviewer if review is not None else None,
        audit=audit,
        creation_date=_iso(made_at),
        error=error,
    )


def manifest_line(row: ExportRow) -> dict[str, Any]:
    """A Ground Truth output-manifest line; an error record is ``{source-ref, error}`` only.

    A discarded review has no ``label``: its metadata says ``review-outcome: discarded``.
    """
    if row.error is not None:
        return {"source-ref": row.source_ref, "error": row.error}
    line: dict[str, Any] = {"source-ref": row.source_ref}
    if row.label is not None:
        line["label"] = row.label
    line["label-metadata"] = {
        "class-name": row.label,
        "confidence": row.confidence,
        "model-name": row.model_name,
        "model-version": row.model_version,
        "human-annotated": "yes" if row.human_annotated else "no",
        "review-outcome": row.review_outcome,
        "audit": row.audit,
        "creation-date": row.creation_date,
    }
    return line


def csv_row(row: ExportRow) -> list[str]:
    """The row's cells in :data:`CSV_COLUMNS` order; missing values are empty cells."""
    cells: list[Any] = [
        row.source_ref,
        row.label,
        row.confidence,
        row.model_name,
        row.model_version,
        "yes" if row.human_annotated else "no",
        row.review_outcome,
        row.reviewer,
        "true" if row.audit else "false",
        row.creation_date,
        row.error,
    ]
    return ["" if cell is None else str(cell) for cell in cells]


def imagefolder_path(row: ExportRow) -> str:
    """``<class>/<source key>``: the class folder keeps the source key's own path, so two
    objects named alike in different folders never collide."""
    if row.label is None:
        raise ValueError(f"{row.source_key!r} has no class: only labeled rows have a file")
    return f"{row.label}/{row.source_key}"


def imagefolder_line(row: ExportRow) -> dict[str, Any]:
    """A ``metadata.jsonl`` line as Hugging Face's ImageFolder reads it: ``file_name`` relative
    to the folder, then extra columns."""
    return {
        "file_name": imagefolder_path(row),
        "label": row.label,
        "confidence": row.confidence,
        "human_annotated": row.human_annotated,
        "review_outcome": row.review_outcome,
        "audit": row.audit,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "source_ref": row.source_ref,
        "creation_date": row.creation_date,
    }


def json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")
