"""The label record: the one result every input object ends with.

A record is either a label (``label``, ``score``, ``top_k``) or an error with a reason from the
fixed set in :class:`ErrorReason`. Records are written to ``labels/<source key>.json``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class ErrorReason(StrEnum):
    """Why an input object got an error record instead of a label. A small, fixed set."""

    EMPTY = "empty"  # zero bytes
    NOT_AN_IMAGE = "not_an_image"  # no image format recognised (text, HTML, random bytes)
    UNSUPPORTED_FORMAT = "unsupported_format"  # a real image format outside the allow-list
    UNREADABLE = "unreadable"  # recognised format, but the decoder failed (corrupt data)
    TRUNCATED = "truncated"  # the data ends before the image does
    TOO_LARGE = "too_large"  # object bigger than the byte limit; refused before downloading
    DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than the limit
    NOT_FOUND = "not_found"  # the object vanished between the event and the fetch
    ACCESS_DENIED = "access_denied"
    INVALID_KEY = "invalid_key"


class Prediction(BaseModel):
    """One entry of a record's top-k list."""

    model_config = ConfigDict(frozen=True)

    label: str
    score: float = Field(ge=0.0, le=1.0)


class RecordError(BaseModel):
    """The failure half of a record."""

    model_config = ConfigDict(frozen=True)

    reason: ErrorReason
    detail: str


class Timings(BaseModel):
    """Per-image stage durations in seconds (inference is the batch's time shared out)."""

    fetch: float = 0.0
    decode: float = 0.0
    infer: float = 0.0


class ReviewOutcome(StrEnum):
    """What a reviewer said about the model's label."""

    AGREED = "agreed"  # the predicted label is right
    CORRECTED = "corrected"  # another class is right
    DISCARDED = "discarded"  # the image belongs to no class


class Review(BaseModel):
    """A person's decision on a record; the model's prediction stays next to it."""

    model_config = ConfigDict(frozen=True)

    label: str | None = None  # None when discarded
    outcome: ReviewOutcome
    reviewer: str
    at: float


class PastLabel(BaseModel):
    """What a record said before a newer model version re-scored it."""

    model_config = ConfigDict(frozen=True)

    label: str | None = None
    score: float | None = None
    model_version: int
    at: float  # when that label was made


class LabelRecord(BaseModel):
    """Exactly one per input object: a label or an error, never both."""

    source_key: str
    # None when the object was refused before its bytes were read (too_large, not_found...);
    # records are written without None fields, so it must have a default to be read back.
    source_etag: str | None = None
    model_name: str
    model_version: int
    label: str | None = None
    score: float | None = None
    top_k: list[Prediction] = Field(default_factory=list)
    needs_review: bool = False
    error: RecordError | None = None
    batch_id: str | None = None
    created_at: float
    runtime: str | None = None  # what computed the label: tensorflow or openvino
    # The numeric format that computed it, fp32 or int8; records written before the rename
    # call it "precision".
    serving_format: str | None = Field(
        None, validation_alias=AliasChoices("serving_format", "precision")
    )
    timings: Timings = Field(default_factory=Timings)
    review: Review | None = None
    # True on an auto-accepted label drawn for a blind audit; omitted (None) on all others.
    audit: bool | None = None
    # Earlier labels, oldest first, when a promoted version re-scored the record; else omitted.
    history: list[PastLabel] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def waits_for_review(self) -> bool:
        """A labeled record the model was unsure of (or drawn for an audit), not yet reviewed."""
        wanted = self.needs_review or bool(self.audit)
        return wanted and self.ok and self.label is not None and self.review is None

    def same_work(self, etag: str | None, model_version: int) -> bool:
        """True when this record already answers ``(etag, model_version)``: rewriting is a no-op."""
        return self.source_etag == etag and self.model_version == model_version
