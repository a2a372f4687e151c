"""The batch engine: keys in, one label record per key out.

Stages overlap: a pool of I/O threads fetches images and decodes them, with at most
``decode_threads`` decoding at once (Pillow releases the GIL); the calling thread runs inference
whenever a full model batch is ready; records are written back by the same pool while the next
batch is inferred. One bad image becomes an error record, never a failed batch. Transient
storage errors abort the batch so the task can retry it.

A record is written only where none is yet (a conditional create), so a new image costs one read
and one write, no lookup first. Only when one is there is it read: one that already answers the
same (ETag, model version) stays, and the key counts as skipped (a retried batch, a repeated
event); an older one is replaced. Records are written without waiting for the disk each time;
the batch makes them durable together before it returns, and so before its task is acknowledged.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from monitoring.metrics import Metrics
from storage import (
    AccessDenied,
    Blob,
    ErrorReason,
    InvalidKey,
    LabelRecord,
    ObjectNotFound,
    ObjectTooLarge,
    Prediction,
    RecordError,
    Timings,
    WriteConflict,
)
from storage.registry import ModelMetadata
from workers.inference.decoding import ImageRejected, decode_image
from workers.inference.model_runtime import LoadedModel, ModelRuntime

log = logging.getLogger(__name__)

TOP_K = 5
_PERMANENT_REASONS: dict[type[Exception], ErrorReason] = {
    ObjectNotFound: ErrorReason.NOT_FOUND,
    ObjectTooLarge: ErrorReason.TOO_LARGE,
    AccessDenied: ErrorReason.ACCESS_DENIED,
    InvalidKey: ErrorReason.INVALID_KEY,
}


class ImageSource(Protocol):
    """Where images are read: an object store's ``incoming/``, or local files for the CLI."""

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob: ...


class RecordSink(Protocol):
    """Where records go: the ``labels/`` store, or standard output for the CLI."""

    def read(self, source_key: str) -> LabelRecord | None: ...

    def write(self, record: LabelRecord, *, if_new: bool = False, durable: bool = True) -> None:
        """Store ``record``; with ``if_new``, ``WriteConflict`` when one is there already."""
        ...

    def sync(self) -> None:
        """Make every record written with ``durable=False`` durable."""
        ...


@dataclass(frozen=True)
class BatchOutcome:
    """What one batch did; counts add up to the number of distinct keys."""

    labeled: int
    errored: int
    skipped: int
    model_version: int


@dataclass
class _Item:
    """One key on its way through the stages."""

    key: str
    etag: str | None = None
    pixels: npt.NDArray[np.uint8] | None = None
    error: RecordError | None = None
    uploaded_at: float | None = None
    timings: Timings = field(default_factory=Timings)


_Written = tuple[str, LabelRecord | None]  # (labeled | errored | skipped, record to index)


@dataclass(frozen=True)
class EngineLimits:
    """How many GETs, writes and decodes run at once, and the largest object and image.

    Built from Settings by ``labeler.wiring.inference_limits``.
    """

    io_threads: int
    decode_threads: int
    max_object_bytes: int
    max_image_pixels: int


class BatchClassifier:
    """Labels batches of keys from ``incoming`` into ``labels`` with the runtime's model."""

    def __init__(
        self,
        incoming: ImageSource,
        labels: RecordSink,
        runtime: ModelRuntime,
        metrics: Metrics,
        limits: EngineLimits,
        on_needs_review: Callable[[Sequence[LabelRecord]], object] | None = None,
        select_audits: Callable[[Sequence[LabelRecord]], list[bool]] | None = None,
    ) -> None:
        self.incoming = incoming
        # Both take a whole batch's records: one Redis round trip per batch, not per image.
        self._on_needs_review = on_needs_review  # the review queue's index, once durable
        self._select_audits = select_audits  # counts auto-accepted labels, draws audits
        self.labels = labels
        self.runtime = runtime
        self.metrics = metrics
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.io_threads, thread_name_prefix="labeler-io")
        # Decode slots as tokens in a C-level queue: a threading.Semaphore is Python code whose
        # release wakes a waiter through a Condition, and with every I/O thread queueing for two
        # slots that was a third of the engine's time holding the GIL.
        self._decode_slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(limits.decode_threads):
            self._decode_slots.put(None)
        # Labelled children made once: looking a child up costs a lock and a dict per call.
        self._stage_seconds = {
            stage: metrics.stage_seconds.labels(stage)
            for stage in ("fetch", "decode", "infer", "write")
        }
        self._images = {
            outcome: metrics.images.labels(outcome, "") for outcome in ("labeled", "skipped")
        }

    def classify(
        self, keys: Sequence[str], *, batch_id: str, model_version: int | None = None
    ) -> BatchOutcome:
        """Label every key (once each, in any order) and return the counts."""
        model = self.runtime.version(model_version) if model_version else self.runtime.current()
        distinct = list(dict.fromkeys(keys))
        prepared = [self._pool.submit(self._prepare, key, model) for key in distinct]
        writes: list[Future[_Written]] = []
        ready: list[_Item] = []
        try:
            for future in as_completed(prepared):
                item = future.result()  # a transient storage error propagates: retry the batch
                if item.error is not None:
                    record = self._record(item, model, None, batch_id)
                    writes.append(self._pool.submit(self._write, record, item))
                    continue
                ready.append(item)
                if len(ready) == model.batch_size:
                    writes += self._infer_and_write(ready, model, batch_id)
                    ready = []
            if ready:
                writes += self._infer_and_write(ready, model, batch_id)
            written = [write.result() for write in writes]
            self.labels.sync()  # durable before the review index points at them, and before ack
            waiting = [record for _, record in written if record is not None]
            if waiting and self._on_needs_review is not None:
                self._on_needs_review(waiting)
        finally:
            for pending in prepared + writes:
                pending.cancel()
        counts = Counter(outcome for outcome, _ in written)
        return BatchOutcome(
            labeled=counts["labeled"],
            errored=counts["errored"],
            skipped=counts["skipped"],
            model_version=model.version,
        )

    def _prepare(self, key: str, model: LoadedModel) -> _Item:
        """Fetch and decode one image; permanent problems become an error on the item."""
        item = _Item(key)
        started = time.perf_counter()
        try:
            blob = self.incoming.get(key, max_bytes=self.limits.max_object_bytes)
        except tuple(_PERMANENT_REASONS) as exc:
            reason = next(r for t, r in _PERMANENT_REASONS.items() if isinstance(exc, t))
            item.error = RecordError(reason=reason, detail=str(exc))
            return item
        item.etag, item.uploaded_at = blob.info.etag, blob.info.last_modified
        item.timings.fetch = time.perf_counter() - started
        self._stage_seconds["fetch"].observe(item.timings.fetch)
        self._decode_slots.get()
        try:
            started = time.perf_counter()  # after the wait for a slot: decoding time only
            try:
                item.pixels = decode_image(
                    blob.data, model.metadata.input_size, max_pixels=self.limits.max_image_pixels
                )
            except ImageRejected as exc:
                item.error = RecordError(reason=exc.reason, detail=exc.detail)
            item.timings.decode = time.perf_counter() - started
        finally:
            self._decode_slots.put(None)
        self._stage_seconds["decode"].observe(item.timings.decode)
        return item

    def _infer_and_write(
        self, items: list[_Item], model: LoadedModel, batch_id: str
    ) -> list[Future[_Written]]:
        started = time.perf_counter()
        pixels = np.stack([item.pixels for item in items if item.pixels is not None])
        probabilities = model.predict(pixels)
        elapsed = time.perf_counter() - started
        self._stage_seconds["infer"].observe(elapsed)
        records = []
        for item, probs in zip(items, probabilities, strict=True):
            item.timings.infer = elapsed / len(items)
            item.pixels = None  # free the array as soon as it is consumed
            records.append(self._record(item, model, probs, batch_id))
        if self._select_audits is not None:
            for record, audit in zip(records, self._select_audits(records), strict=True):
                record.audit = audit or None  # written only where True
        return [
            self._pool.submit(self._write, record, item)
            for record, item in zip(records, items, strict=True)
        ]

    def _record(
        self,
        item: _Item,
        model: LoadedModel,
        probabilities: npt.NDArray[np.float32] | None,
        batch_id: str,
    ) -> LabelRecord:
        return make_record(
            item.key,
            item.etag,
            model.metadata,
            probabilities,
            item.error,
            batch_id=batch_id,
            runtime=model.runtime,
            serving_format=model.serving_format,
            timings=item.timings,
        )

    def _write(self, record: LabelRecord, item: _Item) -> _Written:
        """Write one record. Returns what became of its key (labeled, errored, or skipped: a
        record answering the same work was there already) and the record to index for review,
        if one waits for a reviewer."""
        started = time.perf_counter()
        stored = self._store(record)
        if stored is not record:
            self._images["skipped"].inc()
            return "skipped", stored if stored is not None and stored.waits_for_review else None
        self._stage_seconds["write"].observe(time.perf_counter() - started)
        if record.error is not None:
            self.metrics.images.labels("error", record.error.reason.value).inc()
        else:
            self._images["labeled"].inc()
            self.metrics.confidence.observe(record.score or 0.0)
        if item.uploaded_at is not None:
            self.metrics.upload_to_label_seconds.observe(max(0.0, time.time() - item.uploaded_at))
        outcome = "errored" if record.error is not None else "labeled"
        return outcome, record if record.waits_for_review else None

    def _store(self, record: LabelRecord) -> LabelRecord | None:
        """Write ``record`` where no record is yet, or over one made for other work, and
        return it; or return the record already there when it answers the same (ETag, model
        version): a retried batch re-indexes it, healing an index add that it missed."""
        try:
            self.labels.write(record, if_new=True, durable=False)
            return record
        except WriteConflict:
            existing = self.labels.read(record.source_key)
        if existing is not None and existing.same_work(record.source_etag, record.model_version):
            return existing
        self.labels.write(record, durable=False)  # an older image or model version: replaced
        return record

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_record(
    key: str,
    etag: str | None,
    metadata: ModelMetadata,
    probabilities: npt.NDArray[np.float32] | None,
    error: RecordError | None = None,
    *,
    batch_id: str | None = None,
    runtime: str | None = None,
    serving_format: str | None = None,
    timings: Timings | None = None,
) -> LabelRecord:
    """The record for one image: top-k labels from ``probabilities``, or the ``error``.

    Built without pydantic's validation (``model_construct``): every value is made here, of
    the right type and range (scores clamped to [0, 1]), and validating each of them cost more
    than the rest of the record. Records are validated when they are read back.
    """
    top_k: list[Prediction] = []
    label, score, needs_review = None, None, False
    if error is None and probabilities is not None:
        order = np.argsort(probabilities)[::-1][:TOP_K]
        names = metadata.class_names
        top_k = [
            Prediction.model_construct(label=names[i], score=_score(probabilities[i]))
            for i in order
        ]
        label, score = top_k[0].label, top_k[0].score
        needs_review = score < metadata.threshold_for(label)
    return LabelRecord.model_construct(
        source_key=key,
        source_etag=etag,
        model_name=metadata.name,
        model_version=metadata.version,
        error=error,
        batch_id=batch_id,
        created_at=time.time(),
        runtime=runtime,
        serving_format=serving_format,
        timings=timings if timings is not None else Timings(),
        label=label,
        score=score,
        top_k=top_k,
        needs_review=needs_review,
    )


def _score(value: np.floating | float) -> float:
    return round(min(1.0, max(0.0, float(value))), 6)
