"""Re-scoring labeled records with a newly promoted version, so reviewers stop seeing what it
labels confidently.

A record is re-scored only when no person reviewed it, it is a label (not an error), an older
version made it, and its image still has the ETag it was labeled from (a changed image is the
ordinary pipeline's: labeled afresh from its upload event). The rewrite keeps the old label in
``history`` and is a compare-and-set on the record's ETag: a review or a fresh label written in
between wins, and the relabel of that record is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from storage import (
    LabelRecord,
    ObjectStore,
    PastLabel,
    PermanentError,
    WriteConflict,
    label_key,
    source_key,
)
from workers.inference.batch import make_record
from workers.inference.decoding import ImageRejected, decode_image
from workers.inference.model_runtime import LoadedModel

log = logging.getLogger(__name__)

SAME_LABEL, CHANGED_LABEL, LEFT_QUEUE = "same_label", "changed_label", "left_queue"
RELABEL_OUTCOMES = (SAME_LABEL, CHANGED_LABEL, LEFT_QUEUE)


class ReviewIndex(Protocol):
    """The review queue as the relabeler uses it."""

    def update(self, record: LabelRecord) -> None: ...

    def remove(self, key: str) -> None: ...

    def keys(self, prefix: str = "") -> Iterator[str]: ...


class VersionSource(Protocol):
    def version(self, version: int) -> LoadedModel: ...


@dataclass
class RelabelOutcome:
    """Per outcome (see :data:`RELABEL_OUTCOMES`) how many records were re-scored; ``skipped``:
    reviewed, errors, already this version's, image changed, gone, or written meanwhile."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {**{o: self.counts.get(o, 0) for o in RELABEL_OUTCOMES}, "skipped": self.skipped}


@dataclass
class _Candidate:
    record: LabelRecord
    record_etag: str
    pixels: npt.NDArray[np.uint8]


class Relabeler:
    """Re-scores records of ``labels`` with a pinned model version and re-indexes the queue."""

    def __init__(
        self,
        incoming: ObjectStore,
        labels: ObjectStore,
        models: VersionSource,
        queue: ReviewIndex,
        *,
        max_object_bytes: int,
        max_image_pixels: int,
        on_relabeled: Callable[[str], None] | None = None,
        io_threads: int = 8,
    ) -> None:
        self.incoming = incoming
        self.labels = labels
        self.models = models
        self.queue = queue
        self._max_bytes = max_object_bytes
        self._max_pixels = max_image_pixels
        self._on_relabeled = on_relabeled  # metrics: one call per re-scored record
        self._io_threads = io_threads

    def keys(self, prefix: str = "", *, pending_only: bool = True) -> Iterator[str]:
        """The source keys to consider (see :func:`relabel_keys`)."""
        return relabel_keys(self.queue, self.labels, prefix, pending_only=pending_only)

    def relabel(
        self, keys: Sequence[str], model_version: int, *, pending_only: bool = True
    ) -> RelabelOutcome:
        """Re-score ``keys`` with ``model_version``; with ``pending_only``, only records that
        wait for review (else every record no person reviewed)."""
        model = self.models.version(model_version)
        with ThreadPoolExecutor(max(1, min(self._io_threads, len(keys)))) as pool:
            found = list(pool.map(lambda k: self._candidate(k, model, pending_only), keys))
        candidates = [c for c in found if c is not None]
        outcome = RelabelOutcome(skipped=len(found) - len(candidates))
        if not candidates:
            return outcome
        probabilities = model.predict(np.stack([c.pixels for c in candidates]))
        counts: Counter[str] = Counter()
        for candidate, probs in zip(candidates, probabilities, strict=True):
            result = self._rewrite(candidate, model, probs)
            if result is None:
                outcome.skipped += 1
                continue
            counts[result] += 1
            if self._on_relabeled is not None:
                self._on_relabeled(result)
        outcome.counts = dict(counts)
        return outcome

    def _candidate(self, key: str, model: LoadedModel, pending_only: bool) -> _Candidate | None:
        """The record and decoded image if ``key`` is to be re-scored, else None."""
        try:
            blob = self.labels.get(label_key(key))
            record = LabelRecord.model_validate_json(blob.data)
        except (PermanentError, ValueError):
            return None  # gone, or not a record: nothing to re-score
        if not _eligible(record, model, pending_only):
            return None
        try:
            image = self.incoming.get(key, max_bytes=self._max_bytes)
        except PermanentError:
            return None
        if image.info.etag != record.source_etag:
            return None  # a new image: its upload event labels it afresh
        try:
            size = model.metadata.input_size
            pixels = decode_image(image.data, size, max_pixels=self._max_pixels)
        except ImageRejected:
            return None
        return _Candidate(record, blob.info.etag, pixels)

    def _rewrite(
        self, candidate: _Candidate, model: LoadedModel, probs: npt.NDArray[np.float32]
    ) -> str | None:
        """Write the re-scored record if the old one is still there; returns its outcome."""
        old = candidate.record
        new = make_record(
            old.source_key,
            old.source_etag,
            model.metadata,
            probs,
            batch_id=f"relabel-v{model.version}",
            runtime=model.runtime,
            serving_format=model.serving_format,
        )
        past = PastLabel(
            label=old.label, score=old.score, model_version=old.model_version, at=old.created_at
        )
        new.history = [*(old.history or []), past]
        try:
            self.labels.put(
                label_key(old.source_key),
                new.model_dump_json(exclude_none=True).encode(),
                content_type="application/json",
                if_match=candidate.record_etag,
            )
        except WriteConflict:
            log.info("%r changed while relabeling: the newer write stands", new.source_key)
            return None
        if new.waits_for_review:
            self.queue.update(new)
        else:
            self.queue.remove(new.source_key)
        if old.waits_for_review and not new.waits_for_review:
            return LEFT_QUEUE
        return SAME_LABEL if new.label == old.label else CHANGED_LABEL


def relabel_keys(
    queue: ReviewIndex, labels: ObjectStore, prefix: str = "", *, pending_only: bool = True
) -> Iterator[str]:
    """The source keys a relabel considers: the review queue's (read from Redis, no listing), or
    every record's under ``prefix`` (a listing of the labels store)."""
    if pending_only:
        yield from queue.keys(prefix)
        return
    for info in labels.list(prefix, etags=False):
        try:
            yield source_key(info.key)
        except ValueError:
            continue  # not a record


def _eligible(record: LabelRecord, model: LoadedModel, pending_only: bool) -> bool:
    if record.review is not None or not record.ok or record.label is None:
        return False  # a person's decision is never overwritten
    if record.model_name != model.metadata.name or record.model_version >= model.version:
        return False  # already this version's (or a newer one's) work
    return record.waits_for_review or not pending_only
