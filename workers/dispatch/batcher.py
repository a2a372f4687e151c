"""Micro-batching: buffered keys leave as one ``enqueue(keys)`` call at ``batch_max_images``
or ``batch_max_wait``, whichever comes first. The batcher keeps what was enqueued (to mark in
the ledger) and the events whose keys are all settled (to acknowledge) until :meth:`settle`
hands them over."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from monitoring.metrics import Metrics
from workers.dispatch.backpressure import Backpressure
from workers.dispatch.errors import EnqueueFailed
from workers.dispatch.events import DUPLICATE, QUEUED
from workers.dispatch.inbox import Held


@dataclass(eq=False)
class _Entry:
    """A buffered key: the ETag to mark, who found it, and the events waiting on it."""

    etag: str
    source: str
    since: float  # when it was buffered (clock seconds)
    holders: list[Held] = field(default_factory=list)


class Batcher:
    """The buffer of keys waiting for a batch, in arrival order."""

    def __init__(
        self,
        enqueue: Callable[[list[str]], None],
        metrics: Metrics,
        backpressure: Backpressure,
        max_images: int,
        max_wait: float,
    ) -> None:
        self._enqueue = enqueue
        self._metrics = metrics
        self._backpressure = backpressure
        self._max_images, self._max_wait = max_images, max_wait
        self._buffer: dict[str, _Entry] = {}
        self._marks: dict[str, str] = {}  # enqueued key -> ETag, for the ledger
        self._acks: list[Held] = []  # events whose keys are all settled

    def __len__(self) -> int:
        return len(self._buffer)

    def __contains__(self, key: object) -> bool:
        return key in self._buffer

    def count(self, source: str, outcome: str, n: int = 1) -> None:
        if n:
            self._metrics.events.labels(source, outcome).inc(n)

    def deadline(self) -> float:
        """When the oldest buffered key must leave (clock seconds); inf when empty."""
        if not self._buffer:
            return float("inf")
        return next(iter(self._buffer.values())).since + self._max_wait

    def offer(
        self,
        key: str,
        etag: str,
        source: str,
        holder: Held | None,
        sent: dict[str, str],
        now: float,
    ) -> None:
        """Buffer ``key`` unless (key, ETag) is buffered or was sent inside the window."""
        entry = self._buffer.get(key)
        if entry is None and sent.get(key) == etag:
            self.count(source, DUPLICATE)
            return
        if entry is None:
            entry = self._buffer[key] = _Entry(etag, source, now)
        elif entry.etag == etag:
            self.count(source, DUPLICATE)
        else:
            entry.etag = etag  # changed again before it was sent: the worker reads the latest
        if holder is not None:
            entry.holders.append(holder)
            holder.pending += 1

    def release(self, held: Held) -> None:
        """Acknowledge ``held`` at the next :meth:`settle` if none of its keys waits in a batch."""
        if held.pending == 0:
            self._acks.append(held)

    def settle(self, commit: Callable[[dict[str, str], list[Held]], None]) -> list[Held]:
        """Hand the keys enqueued (key -> ETag) and the settled events to ``commit``, one
        transaction that marks the keys sent and acknowledges the events; forget them once it
        returned. If it raises, both are kept for the next call.

        Returns:
            The events acknowledged.
        """
        if not self._marks and not self._acks:
            return []
        commit(self._marks, self._acks)
        settled, self._marks, self._acks = self._acks, {}, []
        return settled

    def flush_due(self, now: float) -> None:
        while len(self._buffer) >= self._max_images:
            self.flush("full")
        if self._buffer and now >= self.deadline():
            self.flush("timeout")

    def flush(self, reason: str) -> None:
        """Enqueue the oldest keys as one batch; :meth:`_settle` then marks and acknowledges."""
        keys = list(itertools.islice(self._buffer, self._max_images))
        try:
            self._enqueue(keys)
        except Exception as exc:
            raise EnqueueFailed(f"{type(exc).__name__}: {exc}") from exc
        for key in keys:
            entry = self._buffer.pop(key)
            self._marks[key] = entry.etag
            self.count(entry.source, QUEUED)
            for holder in entry.holders:
                holder.pending -= 1
                self.release(holder)
        self._metrics.dispatched_batches.labels(reason).inc()
        self._backpressure.sent(len(keys))
