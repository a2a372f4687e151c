"""The batching dispatcher: object events, watched files and reconciliation finds become
batches of keys.

Its sources: the Redis events list (:mod:`~workers.dispatch.inbox`; MinIO's ``notify_redis`` or a
relay), an SQS queue (:mod:`~workers.dispatch.sqs`), the inotify watcher of a local incoming
directory (:mod:`~workers.dispatch.watcher`), and the reconciliation scan
(:mod:`~workers.dispatch.reconcile`), the safety net for missed events and the source itself where
there are none. Keys leave in batches (``batch_max_images`` or ``batch_max_wait``, whichever
first), de-duplicated by (key, ETag) against the ledger (:mod:`~workers.dispatch.dedup`) over the
in-flight window.

An event is acknowledged only after every key it carried has been enqueued and marked sent
(one MULTI/EXEC), found a duplicate, or ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from monitoring.metrics import Metrics
from storage import (
    InvalidKey,
    ObjectInfo,
    ObjectStore,
    PermanentStorageError,
    TransientError,
    validate_key,
)
from workers.dispatch.backpressure import Backpressure
from workers.dispatch.batcher import Batcher
from workers.dispatch.config import DispatchConfig
from workers.dispatch.dedup import DedupLedger
from workers.dispatch.errors import redis_errors
from workers.dispatch.events import (
    IGNORED,
    INVALID,
    SOURCE_SCAN,
    SOURCE_WATCH,
    CreatedObject,
    parse_event,
    s3_root,
    with_etags,
)
from workers.dispatch.inbox import EventInbox, Held, Inbox
from workers.dispatch.reconcile import Reconciler
from workers.dispatch.sqs import SqsInbox, SqsUnavailable
from workers.dispatch.watcher import DirectoryWatcher

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # monotonic seconds
# What one source found: the event that carried it (None for the watcher and the scan), the
# source's name, and the objects (an ETag of None: HEAD the object for it).
Found = tuple[Held | None, str, list[CreatedObject]]


class Dispatcher:
    """Turns events and reconciliation finds into ``enqueue(keys)`` calls.

    Single-threaded: :meth:`run` loops over :meth:`step` until :meth:`stop` is called (from a
    signal handler or another thread), then flushes what it holds. ``clock`` (monotonic
    seconds) decides every deadline, so tests can drive time.
    """

    def __init__(
        self,
        redis: Any,
        incoming: ObjectStore,
        enqueue: Callable[[list[str]], None],
        backlog: Callable[[], int],
        metrics: Metrics,
        config: DispatchConfig,
        *,
        labels: ObjectStore,
        in_flight: Callable[[], int] | None = None,
        watcher: DirectoryWatcher | None = None,
        sqs: SqsInbox | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._incoming = incoming
        self._metrics = metrics
        self.config = config
        self._clock = clock
        self._watcher = watcher
        self._sqs = sqs
        self._in_flight = in_flight  # inference messages waiting or reserved; None: unknown
        self._root = s3_root(incoming)
        self._inbox = EventInbox(redis, config.events_list, config.take_max)
        self._inboxes: list[Inbox] = [self._inbox] if sqs is None else [self._inbox, sqs]
        self._ledger = DedupLedger(redis, config.dedup_prefix, config.dedup_ttl)
        self._reconciler = Reconciler(incoming, labels, config.scan_chunk)
        self._stopping = False
        self._taken: list[Held] = []  # taken, not yet parsed
        self._unusable: list[Held] = []  # events with nothing usable, to reject
        self._scan: Iterator[list[ObjectInfo]] | None = None
        self._next_scan = 0.0 if config.scan_interval else float("inf")
        self._backpressure = Backpressure(
            backlog,
            metrics,
            config.backlog_high_water,
            config.backlog_low_water,
            config.backlog_check,
        )
        self._batcher = Batcher(
            enqueue, metrics, self._backpressure, config.batch_max_images, config.batch_max_wait
        )

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def reconciling(self) -> bool:
        """Whether a reconciliation pass is under way."""
        return self._scan is not None

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe to call from a signal handler."""
        self._stopping = True

    def run(self) -> bool:
        """Work until stopped; ride out transient failures (Redis, storage, enqueue, SQS) with
        backoff.

        Returns:
            True when everything held was flushed at the end, False when some events were left
            in the processing list for the next start.

        Raises:
            PermanentError: one retrying cannot fix; events taken and not acknowledged stay for
                the next start. (A reconciliation pass that cannot list is logged and tried
                again later instead.)
        """
        if self._watcher is not None:
            self._watcher.start()  # before saying so: files copied from now on are seen
        log.info(
            "dispatching events from Redis list %r (%s) and reconciling %s %s",
            self.config.events_list,
            "mapped to " + repr(self._root) if self._root else "unused",
            self._incoming.uri,
            f"every {self.config.scan_interval:g}s" if self.config.scan_interval else "never",
        )
        delay, recovered = 0.0, False
        while not self._stopping:
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                self.step()
                delay = 0.0
            except TransientError as exc:
                delay = min(max(2 * delay, 0.25), 10.0)
                # The SQS inbox logs its own outages, once and then now and then.
                level = logging.DEBUG if isinstance(exc, SqsUnavailable) else logging.WARNING
                log.log(
                    level, "dispatcher: %s: %s; retrying in %.2fs", type(exc).__name__, exc, delay
                )
                recovered = False  # a lost reply may have moved events we do not know about
                self._sleep(delay)
        if self._watcher is not None:
            self._watcher.stop()
        return self.shutdown()

    def recover(self) -> int:
        """Take back events left in the processing list (by a killed run, or a lost reply)."""
        taken = self._inbox.recover()
        self._taken += taken
        return len(taken)

    def shutdown(self) -> bool:
        """Handle what was taken, send what is buffered, and settle; False if that failed."""
        try:
            self._handle_taken(self._clock())
            self._batcher.flush_due(self._clock())
            while self._batcher:
                self._batcher.flush("shutdown")
            self._settle()
        except TransientError as exc:
            log.error(
                "could not flush at shutdown (%s); %d events stay in %s for the next start",
                exc,
                self._inbox.held,
                self.config.processing_list,
            )
            return False
        log.info("dispatcher stopped")
        return True

    # --- one turn -------------------------------------------------------------------------------

    def step(self) -> None:
        """One turn: settle, take events and scan (unless paused), flush what is due."""
        self._settle()
        now = self._clock()
        if self._backpressure.paused(now):
            self._sleep(self._wait_for(now, paused=True))
        else:
            wait = self._wait_for(now, paused=False)
            if self._watcher is not None:  # it, not the events list, says when to wake up
                self._watcher.wait(wait)
                wait = 0.0
            if self._sqs is not None:  # the same: SQS long-polls in whole seconds
                self._sqs.extend(now)
                self._taken += self._sqs.take(1 if wait > 0 else 0, now)
                wait = 0.0
            self._taken += self._inbox.take(wait)
            self._watched(self._clock())
            self._scan_some(self._clock())
        now = self._clock()
        self._handle_taken(now)
        self._batcher.flush_due(now)
        self._settle()

    def _wait_for(self, now: float, *, paused: bool) -> float:
        """How long this turn may block: until the next flush or scan, at most ``poll``."""
        if not paused and (self._taken or self._scan is not None):
            return 0.0
        wait = self.config.poll if paused else min(self.config.poll, self._next_scan - now)
        wait = min(wait, self._batcher.deadline() - now)
        return wait if wait >= 0.01 else 0.0  # Redis reads a 0 timeout as "block forever"

    def _handle_taken(self, now: float) -> None:
        """Parse taken events and buffer what they name (see :meth:`_offer`).

        Nothing changes until every HEAD succeeded, so a transient failure leaves the taken
        events exactly as they were for the next turn.
        """
        if not self._taken:
            return
        parsed = [parse_event(held.raw, self._root) for held in self._taken]
        found: list[Found] = [
            (held, event.source, event.objects)
            for held, event in zip(self._taken, parsed, strict=True)
        ]
        offered = self._offer(found, now)
        taken, self._taken = self._taken, []
        for held, event, (objects, gone) in zip(taken, parsed, offered, strict=True):
            self._batcher.count(event.source, IGNORED, event.ignored + gone)
            self._batcher.count(event.source, INVALID, event.invalid)
            if event.invalid:
                log.warning("event with %d unusable records: %.300r", event.invalid, held.raw)
            if event.invalid and not objects:
                self._unusable.append(held)  # rejected (SQS: its redrive policy dead-letters it)
            else:
                self._batcher.release(held)

    def _offer(
        self, found: list[Found], now: float, *, nothing_in_flight: bool = False
    ) -> list[tuple[list[CreatedObject], int]]:
        """HEAD the objects whose ETag is unknown, read the ledger, and buffer each (key, ETag)
        not buffered or sent inside the window. Nothing is buffered unless every HEAD and the
        ledger read succeeded. With ``nothing_in_flight`` (no message waiting or reserved), a
        marker stands for no message any more, and what it names is sent again.

        Returns:
            For each of ``found``: its objects with ETags, and how many were gone.
        """
        resolved = [with_etags(self._incoming, objects) for _, _, objects in found]
        sent = self._ledger_sent(
            obj.key for objects, _ in resolved for obj in objects if obj.key not in self._batcher
        )
        if nothing_in_flight and sent:
            log.warning(
                "%d objects were sent and have no record, but no message is waiting or reserved: "
                "their messages were lost (a broker killed as a worker took them); sending again",
                len(sent),
            )
            sent = {}
        for (holder, source, _), (objects, _) in zip(found, resolved, strict=True):
            for obj in objects:
                self._batcher.offer(obj.key, obj.etag or "", source, holder, sent, now)
        return resolved

    def _ledger_sent(self, keys: Iterable[str]) -> dict[str, str]:
        with redis_errors("read the ledger"):
            return self._ledger.sent(keys)

    def _settle(self) -> None:
        """Reject unusable events; mark enqueued keys as sent, then acknowledge the events whose
        keys are all settled; an inbox that acknowledges outside Redis (SQS) does so after."""
        for inbox, group in _by_inbox(self._unusable, self._inboxes):
            if group:
                inbox.reject(group)
                self._unusable = [held for held in self._unusable if held.inbox is not inbox]
        settled = self._batcher.settle(self._commit)
        for inbox, group in _by_inbox(settled, self._inboxes):
            inbox.acked(group)  # also retries what an earlier call could not finish

    def _commit(self, marks: dict[str, str], settled: list[Held]) -> None:
        """One MULTI/EXEC: markers go in before the events that carried them are removed."""
        pipe = self._redis.pipeline(transaction=True)
        self._ledger.mark(pipe, marks)
        for inbox, group in _by_inbox(settled, self._inboxes):
            inbox.ack(pipe, group)
        with redis_errors("settle"):
            pipe.execute()

    def _watched(self, now: float) -> None:
        """Buffer the files the directory watcher found complete."""
        if self._watcher is None or not (keys := self._watcher.ready()):
            return
        try:
            [(_, gone)] = self._offer(
                [(None, SOURCE_WATCH, [CreatedObject(key, None) for key in keys])], now
            )
        except TransientError:  # nothing was buffered: the next turn tries these files again
            self._watcher.again(keys)
            raise
        self._batcher.count(SOURCE_WATCH, IGNORED, gone)

    # --- reconciliation -------------------------------------------------------------------------

    def _scan_some(self, now: float) -> None:
        """Reconcile the next chunk of the listing; only objects without a fresh record are
        looked up in the ledger (so one in flight is not sent twice)."""
        if self._scan is None:
            if now < self._next_scan:
                return
            self._scan = self._reconciler.chunks()
        try:
            unlabeled = next(self._scan, None)
            if unlabeled is None:  # the pass is over
                self._scan, self._next_scan = None, now + self.config.scan_interval
                if (stats := self._reconciler.stats).verified:
                    log.info(
                        "reconciliation pass read %d records written in their object's second; "
                        "%d were current and re-stamped",
                        stats.verified,
                        stats.restamped,
                    )
                return
            self._send_unlabeled(unlabeled, now)
        except TransientError:  # a pass is whole or not at all: start again soon
            self._scan, self._next_scan = None, now + min(self.config.scan_interval, 5.0)
            raise
        except PermanentStorageError as exc:  # say, listing denied: events keep flowing
            self._scan, self._next_scan = None, now + min(self.config.scan_interval, 60.0)
            log.error("reconciliation of %s failed: %s", self._incoming.uri, exc)

    def _send_unlabeled(self, unlabeled: list[ObjectInfo], now: float) -> None:
        valid = []
        for info in unlabeled:
            try:
                valid.append(CreatedObject(validate_key(info.key), info.etag or None))
            except InvalidKey:
                log.warning("cannot label %r: %s", info.key, "not a valid object key")
                self._batcher.count(SOURCE_SCAN, INVALID)
        if not valid:
            return
        # The ledger's markers keep what is in flight from being sent twice. A message can still
        # vanish after it was sent: the Redis transport pops it, then records the reservation in
        # a second command, and a broker killed in between keeps neither. With nothing waiting,
        # reserved or buffered, no marker stands for a message, so nothing stays unlabeled for
        # the whole window.
        idle = not self._batcher and self._queue_idle()
        self._offer([(None, SOURCE_SCAN, valid)], now, nothing_in_flight=idle)  # HEADs unlabeled

    def _queue_idle(self) -> bool:
        """Whether no inference message is waiting or reserved (False when that is unknown)."""
        if self._in_flight is None:
            return False
        with redis_errors("read the inference queue"):
            return self._in_flight() == 0

    # --- helpers ------------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps so a stop request is honoured quickly."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def _by_inbox(held: list[Held], inboxes: list[Inbox]) -> list[tuple[Inbox, list[Held]]]:
    """``held`` grouped by the inbox each came from, one group (maybe empty) per inbox."""
    return [(inbox, [h for h in held if h.inbox is inbox]) for inbox in inboxes]
