"""The review desk: hand out the next item, and apply a reviewer's decision.

A decision is idempotent and never a lost write: the image is copied to
``training/<class>/<source key>`` (a correction of an earlier review moves it, so no image sits in
two classes), then the record gains ``review`` through a compare-and-set on its ETag (a record
changed in between is re-read and the decision applied again), then the item leaves the queue.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from storage import (
    InvalidKey,
    LabelerError,
    LabelRecord,
    ObjectNotFound,
    ObjectStore,
    PermanentError,
    Review,
    ReviewOutcome,
    TransientError,
    WriteConflict,
    label_key,
    validate_key,
)
from workers.review.audits import QualityLedger
from workers.review.queue import LABEL_ISSUE_MEMBER, Claim, ReviewQueue

log = logging.getLogger(__name__)

# A class is one folder name under training/: no '/', no leading dot, nothing a URL mangles.
# Always fullmatch: ``$`` alone would let a trailing newline through.
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")
_CAS_ATTEMPTS = 5


class Action(StrEnum):
    ACCEPT = "accept"
    CORRECT = "correct"
    DISCARD = "discard"


class ReviewError(LabelerError):
    """Root of what a decision can refuse; the message says why."""


class InvalidDecision(ReviewError, PermanentError, ValueError):
    """The request itself is wrong (a bad key or class name, a correction without a class)."""


class LeaseLost(ReviewError, PermanentError):
    """The reviewer no longer holds the item (the lease expired or was never theirs): take
    the next item instead."""


class StaleItem(ReviewError, PermanentError):
    """The item can no longer be reviewed as shown: its image changed, or its record is gone."""


class DecisionContended(ReviewError, TransientError):
    """The record kept changing under other writers while the decision was applied: send it
    again."""


@dataclass(frozen=True)
class ReviewItem:
    """What a reviewer sees: the record (prediction, top-k, model version) and the lease."""

    record: LabelRecord
    claim: Claim
    label_issue: bool = False  # a training image: ``record.label`` is its folder
    suggested: str | None = None  # for a label issue, the class the predictions suggest


# Called once per first decision of an item with (predicted label, outcome): metrics.
DecisionObserver = Callable[[str, ReviewOutcome], None]


class ReviewDesk:
    """Next item and decisions over the incoming, labels and training stores and the queue."""

    def __init__(
        self,
        incoming: ObjectStore,
        labels: ObjectStore,
        training: ObjectStore,
        queue: ReviewQueue,
        on_decided: DecisionObserver | None = None,
        ledger: QualityLedger | None = None,
    ) -> None:
        self.incoming = incoming
        self.labels = labels
        self.training = training
        self.queue = queue
        self._on_decided = on_decided
        self._ledger = ledger  # label-quality counters: audits and reviewed items apart

    def next_item(self, *, label: str | None = None, prefix: str = "") -> ReviewItem | None:
        """Lease the oldest item still worth reviewing; stale or decided ones leave the queue."""
        while (claim := self.queue.claim(label=label, prefix=prefix)) is not None:
            if claim.item.label_issue:
                if self.training.exists(_training_key(claim.item.key)):
                    return ReviewItem(_issue_record(claim), claim, True, claim.item.suggested)
                self.queue.remove(claim.item.key)  # moved or deleted since it was found
                continue
            record = self._current(claim.item.key)
            if record is not None and record.waits_for_review:
                return ReviewItem(record, claim)
            self.queue.remove(claim.item.key)  # decided elsewhere, relabeled, or image changed
        return None

    def skip(self, key: str, token: str) -> None:
        """Put a leased item at the back of the queue.

        Raises:
            LeaseLost: ``token`` does not hold ``key`` (expired, decided, or never leased).
        """
        member = validate_item_key(key)
        if not self.queue.holds(member, token):
            raise LeaseLost(f"{key!r} is not leased to you (it expired or was never yours)")
        self.queue.skip(member, token)

    def image_source(self, key: str) -> tuple[ObjectStore, str]:
        """Where an item's image is: training/ for a label issue, else incoming/."""
        if key.startswith(LABEL_ISSUE_MEMBER):
            return self.training, _training_key(key)
        return self.incoming, validate_key(key)

    def decide(
        self,
        key: str,
        token: str | None,
        action: Action,
        reviewer: str,
        label: str | None = None,
    ) -> LabelRecord:
        """Apply one decision and return the updated record.

        Args:
            key: The source key (as in ``incoming/``).
            token: The lease from :meth:`next_item`; may be None only to change an earlier review.
            action: accept the prediction, correct it to ``label``, or discard the image.
            reviewer: Who decided (stored in the record).
            label: The right class, for a correction.

        Raises:
            InvalidDecision: A bad key or class name, or a correction without a class.
            LeaseLost: The lease is not (or no longer) this reviewer's.
            StaleItem: The image changed since it was labeled, or the record is gone.
        """
        if action is Action.CORRECT and (label is None or not is_class_name(label)):
            raise InvalidDecision(
                f"a correction needs a class name matching {CLASS_NAME.pattern} (got {label!r})"
            )
        if key.startswith(LABEL_ISSUE_MEMBER):
            return self._decide_label_issue(key, token, action, reviewer, label)
        try:
            validate_key(key)
        except ValueError as exc:
            raise InvalidDecision(str(exc)) from None
        for _ in range(_CAS_ATTEMPTS):
            try:
                return self._decide_once(key, token, action, reviewer, label)
            except WriteConflict:
                log.info("record of %r changed while deciding; applying the decision again", key)
        raise DecisionContended(f"the record of {key!r} kept changing; try again")

    def _decide_once(
        self, key: str, token: str | None, action: Action, reviewer: str, label: str | None
    ) -> LabelRecord:
        record, etag = self._read(key)
        previous = record.review
        if previous is None and (token is None or not self.queue.holds(key, token)):
            raise LeaseLost(f"{key!r} is not leased to you (it expired or was never yours)")
        if record.label is None:
            raise StaleItem(f"{key!r} has no label to review (its record is an error)")
        self._check_image(record)
        review = _review(record, action, reviewer, label)
        if review.label is not None and not is_class_name(review.label):
            # A predicted label from a model registered before names were checked: never a path.
            raise InvalidDecision(f"{review.label!r} is not a usable class name; correct it")
        if previous is not None and (previous.label, previous.outcome) == (
            review.label,
            review.outcome,
        ):
            self.queue.remove(key)  # the same decision again: nothing else to do
            return record
        if review.label is not None:
            self._copy_to_training(key, review.label, record.source_etag)
        if previous is not None and previous.label not in (None, review.label):
            self.training.delete(f"{previous.label}/{key}")  # moved: one class per image
        updated = record.model_copy(update={"review": review})
        self.labels.put(
            label_key(key),
            updated.model_dump_json(exclude_none=True).encode(),
            content_type="application/json",
            if_match=etag,
        )
        self.queue.remove(key)
        if previous is None:
            if self._ledger is not None:
                self._ledger.count_decision(record, review.outcome)
            if not record.audit:  # the old tally is about low-confidence items only
                self.queue.tally(record.label, review.outcome.value)
            if self._on_decided is not None:
                self._on_decided(record.label, review.outcome)
        return updated

    def _decide_label_issue(
        self, member: str, token: str | None, action: Action, reviewer: str, label: str | None
    ) -> LabelRecord:
        """Keep the image in its folder (accept), move it to ``label`` (correct), or take it
        out of training/ (discard): the only ways a label issue changes training data."""
        item = self.queue.get(member)
        if item is None or token is None or not self.queue.holds(member, token):
            raise LeaseLost(f"{member!r} is not leased to you (it expired or was never yours)")
        key = _training_key(member)
        given, _, path = key.partition("/")
        try:
            blob = self.training.get(key)
        except ObjectNotFound:
            self.queue.remove(member)
            raise StaleItem(f"{key!r} is no longer in training/") from None
        record = _issue_record(Claim(item, token, 0.0))
        review = _review(record, action, reviewer, label)
        if review.label != given:
            if review.label is not None:
                self.training.put(validate_key(f"{review.label}/{path}"), blob.data)
            self.training.delete(key)
        self.queue.remove(member)
        return record.model_copy(update={"review": review})

    def _read(self, key: str) -> tuple[LabelRecord, str]:
        try:
            blob = self.labels.get(label_key(key))
        except ObjectNotFound:
            self.queue.remove(key)
            raise StaleItem(f"{key!r} has no record (deleted?)") from None
        return LabelRecord.model_validate_json(blob.data), blob.info.etag

    def _current(self, key: str) -> LabelRecord | None:
        """The record if it still describes the image in ``incoming/``, else None."""
        try:
            record, _ = self._read(key)
            self._check_image(record)
        except (StaleItem, ValueError):
            return None
        return record

    def _check_image(self, record: LabelRecord) -> None:
        try:
            etag = self.incoming.head(record.source_key).etag
        except ObjectNotFound:
            self.queue.remove(record.source_key)
            raise StaleItem(f"{record.source_key!r} is no longer in incoming/") from None
        if etag != record.source_etag:
            self.queue.remove(record.source_key)
            raise StaleItem(
                f"{record.source_key!r} changed since it was labeled; it will be labeled again"
            )

    def _copy_to_training(self, key: str, label: str, etag: str | None) -> None:
        blob = self.incoming.get(key)
        if blob.info.etag != etag:
            raise StaleItem(f"{key!r} changed since it was labeled; it will be labeled again")
        try:
            target = validate_key(f"{label}/{key}")
        except ValueError as exc:
            raise InvalidDecision(str(exc)) from None
        self.training.put(target, blob.data)


def is_class_name(name: object) -> bool:
    """True for a name that is safe as one folder under ``training/``."""
    return isinstance(name, str) and CLASS_NAME.fullmatch(name) is not None


def count_reviewed_since(training: ObjectStore, labels: ObjectStore, since: float) -> int:
    """Images in ``training/`` written after ``since`` that a reviewer put there.

    Only the new images' records are read, so a night costs what changed, not the whole set.
    """
    count = 0
    for info in training.list():
        if info.last_modified < since or "/" not in info.key:
            continue
        label, key = info.key.split("/", 1)
        try:
            record = LabelRecord.model_validate_json(labels.get(label_key(key)).data)
        except (ObjectNotFound, ValueError):
            continue  # added by hand, not through a review
        if record.review is not None and record.review.label == label:
            count += 1
    return count


def _training_key(member: str) -> str:
    """``/training/3/0123.png`` -> ``3/0123.png`` (a key in training/)."""
    key = validate_key(member[len(LABEL_ISSUE_MEMBER) :])
    if "/" not in key:
        raise InvalidKey(f"{member!r} names no class folder")
    return key


def _issue_record(claim: Claim) -> LabelRecord:
    """What a reviewer sees of a label issue, shaped as a record: its folder is the label."""
    return LabelRecord(
        source_key=claim.item.key,
        model_name="label-issues",
        model_version=0,
        label=claim.item.label,
        created_at=claim.item.labeled_at,
    )


def _review(record: LabelRecord, action: Action, reviewer: str, label: str | None) -> Review:
    if action is Action.DISCARD:
        return Review(
            label=None, outcome=ReviewOutcome.DISCARDED, reviewer=reviewer, at=time.time()
        )
    chosen = record.label if action is Action.ACCEPT else label
    outcome = ReviewOutcome.AGREED if chosen == record.label else ReviewOutcome.CORRECTED
    return Review(label=chosen, outcome=outcome, reviewer=reviewer, at=time.time())


def validate_item_key(key: str) -> str:
    """``key`` if it names a review item: a source key, or a label issue's training member.

    Raises:
        InvalidKey: Neither (traversal, empty segments, a name too long...).
    """
    if key.startswith(LABEL_ISSUE_MEMBER):
        _training_key(key)
        return key
    return validate_key(key)
