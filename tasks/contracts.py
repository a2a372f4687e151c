"""Task payloads and results: what crosses the queue, validated on both ends.

Messages carry keys, never image bytes. Payloads are plain JSON objects so that any producer
(the dispatcher, the CLI, another language) can send them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from storage import InvalidKey, validate_key

CLASSIFY_BATCH = "labeler.classify_batch"
MAX_KEYS_PER_BATCH = 4096

P = TypeVar("P", bound=BaseModel)


class InvalidPayload(ValueError):
    """A task message that does not match its contract; retrying cannot fix it."""


class ClassifyBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_id: str = Field(min_length=1, max_length=128)
    keys: list[str] = Field(min_length=1, max_length=MAX_KEYS_PER_BATCH)
    model_version: int | None = Field(None, ge=1, description="Pin a version; default: production")

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            try:
                validate_key(key)
            except InvalidKey as exc:
                raise ValueError(str(exc)) from None
        return keys


class BatchResult(BaseModel):
    batch_id: str
    labeled: int
    errored: int
    skipped: int
    model_version: int


def parse_payload(model: type[P], payload: Any) -> P:
    """Validate ``payload`` or raise :class:`InvalidPayload` saying which fields are wrong."""
    if not isinstance(payload, dict):
        raise InvalidPayload(
            f"{model.__name__}: payload must be a JSON object, got {type(payload).__name__}"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidPayload(f"{model.__name__}: {problems}") from None
