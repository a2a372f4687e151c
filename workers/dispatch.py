"""The dispatcher engine: object events and new files in ``incoming/`` become batches of keys.

Two sources feed one buffer. Events: a Redis list that MinIO (``notify_redis``, ``access``
format) or an S3 relay pushes event JSON to. The scan: a periodic listing of the incoming store,
the safety net for missed events and the only source for a local directory. Keys leave in
batches (``batch_max_images`` or ``batch_max_wait``, whichever first), de-duplicated by
(key, ETag) against Redis so at-least-once events never label an object twice.

Crash safety: an event is moved (``BLMOVE``) from the events list to ``<events>:processing``
and removed from there (``LREM``) only after every key it carried has been enqueued and marked
dispatched, or found a duplicate, or ignored. A restarted dispatcher first takes back whatever
is left in the processing list. Run one dispatcher per events list: a second one would take the
first one's in-flight events for abandoned ones.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from monitoring.metrics import Metrics
from storage import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    TransientStorageError,
    validate_key,
)
from workers.events import (
    DUPLICATE,
    IGNORED,
    INVALID,
    QUEUED,
    SOURCE_SCAN,
    CreatedObject,
    parse_event,
    s3_root,
)

log = logging.getLogger(__name__)

_CHECK_CHUNK = 1000  # keys per MGET
# Up to ARGV[1] more events in one round trip, atomically: no reply lost with events moved.
_TAKE_MORE = """
local moved = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  moved[i] = item
end
return moved
"""


class EnqueueFailed(Exception):
    """``enqueue`` raised: the batch stays buffered and is sent again on the next turn."""


@dataclass(frozen=True)
class DispatchConfig:
    """How the dispatcher batches, scans and throttles. Times are in seconds."""

    events_list: str = "labeler:events"
    batch_max_images: int = 64
    batch_max_wait: float = 0.5
    scan_interval: float = 30.0  # 0: never scan (events only)
    backlog_high_water: int = 10_000
    backlog_low_water: int = 5_000
    dedup_ttl: int = 30 * 24 * 3600
    dedup_prefix: str = "labeler:dispatched:"
    poll: float = 0.5  # longest blocking wait: how soon a stop request is noticed
    backlog_check: float = 1.0  # between two backlog() calls (each reads Redis)
    take_max: int = 64  # events moved per round trip
    scan_chunk: int = 1000  # listed objects handled per turn, so events keep flowing

    def __post_init__(self) -> None:
        if self.batch_max_images < 1 or self.take_max < 1 or self.scan_chunk < 1:
            raise ValueError("batch_max_images, take_max and scan_chunk must be at least 1")
        if self.batch_max_wait < 0 or self.scan_interval < 0 or self.poll <= 0:
            raise ValueError("batch_max_wait and scan_interval must be >= 0, poll > 0")
        if not 0 <= self.backlog_low_water < self.backlog_high_water:
            raise ValueError("backlog_low_water must be >= 0 and below backlog_high_water")

    @property
    def processing_list(self) -> str:
        return f"{self.events_list}:processing"


# --- the engine -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Held:
    """One event taken from the list; acknowledged (``LREM``) when ``pending`` reaches 0."""

    raw: bytes
    pending: int = 0


@dataclass(eq=False)
class _Entry:
    """A buffered key: the ETag to mark, who found it, and the events waiting on it."""

    etag: str
    source: str
    since: float  # when it was buffered (monotonic)
    holders: list[_Held] = field(default_factory=list)


class Dispatcher:
    """Turns events and scan results into ``enqueue(keys)`` calls; see the module docstring.

    Single-threaded: :meth:`run` loops over :meth:`step` until :meth:`stop` is called (from a
    signal handler or another thread), then flushes what it holds.
    """

    def __init__(
        self,
        redis: Any,
        incoming: ObjectStore,
        enqueue: Callable[[list[str]], None],
        backlog: Callable[[], int],
        metrics: Metrics,
        config: DispatchConfig,
    ) -> None:
        self._redis = redis
        self._incoming = incoming
        self._enqueue = enqueue
        self._backlog = backlog
        self._metrics = metrics
        self.config = config
        self._root = s3_root(incoming)
        self._take_more = redis.register_script(_TAKE_MORE)
        self._stopping = False
        self._buffer: dict[str, _Entry] = {}
        self._inbox: list[_Held] = []  # taken, not yet parsed
        self._held: Counter[bytes] = Counter()  # every taken event not yet acknowledged
        self._acks: list[_Held] = []  # settled events whose LREM is still to be done
        self._marks: dict[str, str] = {}  # enqueued keys whose marker is still to be written
        self._known: dict[str, str] = {}  # key -> ETag this process already settled
        self._scan: Iterator[ObjectInfo] | None = None
        self._scan_seen: set[str] = set()
        self._next_scan = 0.0 if config.scan_interval else float("inf")
        self._paused = False
        self._backlog_at = float("-inf")
        self._backlog_level = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe to call from a signal handler."""
        self._stopping = True

    def run(self) -> bool:
        """Work until stopped; ride out Redis, storage and enqueue failures with backoff.

        Returns:
            True when everything held was flushed at the end, False when some events were left
            in the processing list for the next start.
        """
        log.info(
            "dispatching events from Redis list %r (%s) and scanning %s %s",
            self.config.events_list, "mapped to " + repr(self._root) if self._root else "unused",
            self._incoming.uri,
            f"every {self.config.scan_interval:g}s" if self.config.scan_interval else "never",
        )  # fmt: skip
        delay, recovered = 0.0, False
        while not self._stopping:
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                self.step()
                delay = 0.0
            except (RedisError, StorageError, EnqueueFailed) as exc:
                delay = min(max(2 * delay, 0.25), 10.0)
                log.warning("dispatcher: %s: %s; retrying in %.2fs", type(exc).__name__, exc, delay)
                recovered = False  # a lost reply may have moved events we do not know about
                self._sleep(delay)
        return self.shutdown()

    def recover(self) -> int:
        """Take back events left in the processing list (by a killed run, or a lost reply)."""
        mine = Counter(self._held)
        taken = 0
        for raw in self._redis.lrange(self.config.processing_list, 0, -1):
            if mine[raw] > 0:
                mine[raw] -= 1
            else:
                self._hold(raw)
                taken += 1
        if taken:
            log.info("recovered %d events from %s", taken, self.config.processing_list)
        return taken

    def shutdown(self) -> bool:
        """Handle what was taken, send what is buffered, and settle; False if that failed."""
        try:
            self._handle_inbox(time.monotonic())
            self._flush_due(time.monotonic())
            while self._buffer:
                self._flush("shutdown")
            self._settle()
        except (RedisError, StorageError, EnqueueFailed) as exc:
            log.error(
                "could not flush at shutdown (%s); %d events stay in %s for the next start",
                exc, sum(self._held.values()), self.config.processing_list,
            )  # fmt: skip
            return False
        log.info("dispatcher stopped")
        return True

    # --- one turn -------------------------------------------------------------------------------

    def step(self) -> None:
        """One turn: settle, take events and scan (unless paused), flush what is due."""
        self._settle()
        now = time.monotonic()
        if self._intake_paused(now):
            self._sleep(self._wait_for(now, paused=True))
        else:
            self._take(self._wait_for(now, paused=False))
            self._scan_some(time.monotonic())
        now = time.monotonic()
        self._handle_inbox(now)
        self._flush_due(now)
        self._settle()

    def _wait_for(self, now: float, *, paused: bool) -> float:
        """How long this turn may block: until the next flush or scan, at most ``poll``."""
        if not paused and (self._inbox or self._scan is not None):
            return 0.0
        wait = self.config.poll if paused else min(self.config.poll, self._next_scan - now)
        if self._buffer:
            wait = min(wait, self._oldest() + self.config.batch_max_wait - now)
        return wait if wait >= 0.01 else 0.0  # Redis reads a 0 timeout as "block forever"

    def _take(self, timeout: float) -> None:
        events, processing = self.config.events_list, self.config.processing_list
        moved: list[bytes] = []
        if timeout > 0:
            first = self._redis.blmove(events, processing, timeout, "LEFT", "RIGHT")
            if first is None:
                return
            moved.append(first)
        more = self.config.take_max - len(moved)
        moved += self._take_more(keys=[events, processing], args=[more])
        for raw in moved:
            self._hold(raw)

    def _hold(self, raw: bytes) -> None:
        self._inbox.append(_Held(raw))
        self._held[raw] += 1

    def _handle_inbox(self, now: float) -> None:
        """Parse taken events, HEAD objects whose event has no ETag, buffer what is new.

        Nothing changes until every HEAD succeeded, so a transient failure leaves the inbox
        exactly as it was for the next turn.
        """
        if not self._inbox:
            return
        parsed = [parse_event(held.raw, self._root) for held in self._inbox]
        found: list[tuple[_Held, str, list[CreatedObject]]] = []
        for held, event in zip(self._inbox, parsed, strict=True):
            objects, gone = self._with_etags(event.objects)
            event.ignored += gone
            found.append((held, event.source, objects))
        remote = self._dispatched(obj.key for _, _, objects in found for obj in objects)
        self._inbox = []
        for (held, source, objects), event in zip(found, parsed, strict=True):
            self._count(source, IGNORED, event.ignored)
            self._count(source, INVALID, event.invalid)
            if event.invalid:
                log.warning("event with %d unusable records: %.300r", event.invalid, held.raw)
            for obj in objects:
                self._offer(obj.key, obj.etag or "", source, held, remote, now)
            if held.pending == 0:
                self._acks.append(held)

    def _with_etags(self, objects: list[CreatedObject]) -> tuple[list[CreatedObject], int]:
        ready, gone = [], 0
        for obj in objects:
            if obj.etag is not None:
                ready.append(obj)
                continue
            try:
                ready.append(CreatedObject(obj.key, self._incoming.head(obj.key).etag))
            except ObjectNotFound:
                gone += 1  # deleted since: nothing to label
            except TransientStorageError:
                raise
            except StorageError as exc:
                log.warning("cannot HEAD %r (%s): sending it without an ETag", obj.key, exc)
                ready.append(CreatedObject(obj.key, ""))  # the worker records why it failed
        return ready, gone

    def _offer(
        self,
        key: str,
        etag: str,
        source: str,
        holder: _Held | None,
        remote: dict[str, str],
        now: float,
    ) -> None:
        """Buffer ``key`` unless (key, ETag) is buffered or already dispatched."""
        entry = self._buffer.get(key)
        if entry is None and etag in (self._known.get(key), remote.get(key)):
            self._known[key] = etag
            self._count(source, DUPLICATE)
            return
        if entry is None:
            entry = self._buffer[key] = _Entry(etag, source, now)
        elif entry.etag == etag:
            self._count(source, DUPLICATE)
        else:
            entry.etag = etag  # changed again before it was sent: the worker reads the latest
        if holder is not None:
            entry.holders.append(holder)
            holder.pending += 1

    def _dispatched(self, keys: Iterable[str]) -> dict[str, str]:
        """The ETag each key was last dispatched with, from Redis (absent keys are left out)."""
        wanted = list(dict.fromkeys(k for k in keys if k not in self._buffer))
        found: dict[str, str] = {}
        prefix = self.config.dedup_prefix
        for start in range(0, len(wanted), _CHECK_CHUNK):
            chunk = wanted[start : start + _CHECK_CHUNK]
            values = self._redis.mget([prefix + k for k in chunk])
            for key, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[key] = value.decode() if isinstance(value, bytes) else str(value)
        return found

    def _oldest(self) -> float:
        return next(iter(self._buffer.values())).since

    def _flush_due(self, now: float) -> None:
        while len(self._buffer) >= self.config.batch_max_images:
            self._flush("full")
        if self._buffer and now - self._oldest() >= self.config.batch_max_wait:
            self._flush("timeout")

    def _flush(self, reason: str) -> None:
        """Enqueue the oldest keys as one batch; :meth:`_settle` then marks and acknowledges."""
        keys = list(itertools.islice(self._buffer, self.config.batch_max_images))
        try:
            self._enqueue(keys)
        except Exception as exc:
            raise EnqueueFailed(f"{type(exc).__name__}: {exc}") from exc
        for key in keys:
            entry = self._buffer.pop(key)
            self._marks[key] = self._known[key] = entry.etag
            self._count(entry.source, QUEUED)
            for holder in entry.holders:
                holder.pending -= 1
                if holder.pending == 0:
                    self._acks.append(holder)
        self._metrics.dispatched_batches.labels(reason).inc()
        self._backlog_level += len(keys)

    def _settle(self) -> None:
        """Mark enqueued keys as dispatched, then acknowledge events whose keys are all settled.

        One MULTI/EXEC: markers go in before the events that carried them are removed.
        """
        if not self._marks and not self._acks:
            return
        pipe = self._redis.pipeline(transaction=True)
        for key, etag in self._marks.items():
            pipe.set(self.config.dedup_prefix + key, etag, ex=self.config.dedup_ttl)
        for held in self._acks:
            pipe.lrem(self.config.processing_list, 1, held.raw)
        pipe.execute()
        for held in self._acks:
            self._held[held.raw] -= 1
        self._held += Counter()  # drop the zeros
        self._marks, self._acks = {}, []

    # --- scanning -------------------------------------------------------------------------------

    def _scan_some(self, now: float) -> None:
        """Check the next chunk of the listing; Redis is asked only about new or changed keys."""
        if self._scan is None:
            if now < self._next_scan:
                return
            self._scan, self._scan_seen = iter(self._incoming.list()), set()
        try:
            chunk = list(itertools.islice(self._scan, self.config.scan_chunk))
        except StorageError:
            self._scan, self._next_scan = None, now + min(self.config.scan_interval, 5.0)
            raise
        fresh: list[ObjectInfo] = []
        for info in chunk:
            self._scan_seen.add(info.key)
            entry = self._buffer.get(info.key)
            if info.etag not in (self._known.get(info.key), entry and entry.etag):
                fresh.append(info)
        remote = self._dispatched(info.key for info in fresh)
        for info in fresh:
            try:
                validate_key(info.key)
            except InvalidKey:
                log.warning("cannot label %r: %s", info.key, "not a valid object key")
                self._known[info.key] = info.etag
                self._count(SOURCE_SCAN, INVALID)
                continue
            self._offer(info.key, info.etag, SOURCE_SCAN, None, remote, now)
        if len(chunk) < self.config.scan_chunk:  # the listing is exhausted
            self._known = {k: v for k, v in self._known.items() if k in self._scan_seen}
            self._scan, self._next_scan = None, now + self.config.scan_interval
            log.debug("scan done: %d objects", len(self._scan_seen))
            self._scan_seen = set()

    # --- backpressure -------------------------------------------------------------------------

    def _intake_paused(self, now: float) -> bool:
        """Pause at the high-water mark, resume below the low-water mark."""
        if now - self._backlog_at >= self.config.backlog_check:
            self._backlog_level, self._backlog_at = self._backlog(), now
        level = self._backlog_level  # plus what we sent since we last asked
        if not self._paused and level >= self.config.backlog_high_water:
            self._paused = True
            self._metrics.dispatcher_paused.set(1)
            log.warning(
                "pausing intake: %d images queued (high-water %d); resuming below %d",
                level, self.config.backlog_high_water, self.config.backlog_low_water,
            )  # fmt: skip
        elif self._paused and level < self.config.backlog_low_water:
            self._paused = False
            self._metrics.dispatcher_paused.set(0)
            log.info("resuming intake: %d images queued", level)
        return self._paused

    # --- helpers ------------------------------------------------------------------------------

    def _count(self, source: str, outcome: str, n: int = 1) -> None:
        if n:
            self._metrics.events.labels(source, outcome).inc(n)

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps so a stop request is honoured quickly."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
