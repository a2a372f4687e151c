"""The review queue: an index in Redis of records that wait for a person, with short leases.

``<ns>:pending`` is a sorted set of source keys scored by the review order (see
:mod:`workers.review.ordering`: the margin under ``uncertainty``, lowest first),
``<ns>:class:<label>`` the same per predicted class, ``<ns>:audit`` the audit items and
``<ns>:issue`` the label issues (training images whose folder is doubted), ``<ns>:items``
a hash of key -> what the record said (label, ETag, time). Claiming runs as one Lua script: it
walks a set in order and takes the first key whose lease (``<ns>:lease:<key>``, ``SET NX PX``) it
can set, so two reviewers never hold the same item. Nothing here lists ``labels/``:
:meth:`ReviewQueue.rebuild` does that once, for ``labeler review reindex``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from storage import LabelRecord
from workers.review.ordering import (
    BALANCED_CLAIM,
    ReviewOrder,
    back_score,
    issue_score,
    order_score,
)

DEFAULT_NAMESPACE = "labeler:review"
# Queue members of training images a label-issue search doubts. A leading '/' is never valid in
# an object key, so such a member can never be mistaken for a source key in incoming/.
LABEL_ISSUE_MEMBER = "/training/"

# KEYS: the sorted set to walk (200 members per ZRANGE).
# ARGV: namespace, token, lease ms, key prefix, rank to start at, most members to scan.
# Returns [key, item] when it leased one, false when the set ended, or the rank to go on from:
# a call scans a bounded stretch, so a filter that matches little never blocks Redis for long.
_CLAIM = """
local ns, token, lease_ms, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local start = tonumber(ARGV[5])
local stop = start + tonumber(ARGV[6])
while start < stop do
  local members = redis.call('ZRANGE', KEYS[1], start, math.min(start + 199, stop - 1))
  if #members == 0 then return false end
  for _, key in ipairs(members) do
    if prefix == '' or string.sub(key, 1, #prefix) == prefix then
      if redis.call('SET', ns .. ':lease:' .. key, token, 'NX', 'PX', lease_ms) then
        return {key, redis.call('HGET', ns .. ':items', key)}
      end
    end
  end
  start = start + #members
end
return start
"""
# The index's keys besides the per-class sets (the last two: the balanced claim's turn counters).
_INDEX = ("pending", "items", "classes", "audit", "issue", "turn", "audit-credit", "issue-credit")
_LANES = ("audit", "issue")  # served at their share of pending, apart from the class turns
SCAN_PER_CALL = 2000  # members one claim call looks at before handing Redis back

# Delete a lease only if it is still ours (a lease that expired may belong to someone else now).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class QueuedItem:
    """One key waiting for review, as the index knows it."""

    key: str
    label: str
    etag: str | None
    labeled_at: float
    label_issue: bool = False  # a training image; ``label`` is its folder
    suggested: str | None = None  # the class the out-of-sample predictions suggest


@dataclass(frozen=True)
class Claim:
    """An item leased to one reviewer until ``expires_at``; ``token`` proves the lease."""

    item: QueuedItem
    token: str
    expires_at: float


class ReviewQueue:
    """The pending-review index in Redis (any ``redis.Redis`` client, ``decode_responses`` off)."""

    def __init__(
        self,
        redis: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_seconds: float = 120.0,
        max_scan: int = 100_000,
        order: ReviewOrder = "uncertainty",
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.order = order
        self._redis = redis
        self._ns = namespace
        self.lease_seconds = lease_seconds
        self._max_scan = max_scan
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._balanced = redis.register_script(BALANCED_CLAIM)

    @property
    def client(self) -> Any:
        """The Redis client (the review app keeps its sessions and sign-in counts there too)."""
        return self._redis

    def add(self, record: LabelRecord) -> None:
        """Index a record that needs review (the worker calls this after writing it)."""
        if record.label is None:
            raise ValueError(f"record of {record.source_key!r} has no label to review")
        self.add_many([record])

    def add_many(self, records: Iterable[LabelRecord]) -> int:
        """Index several records in one round trip, a few commands for all of them (a command
        per record cost the worker more than the rest of the review path); returns how many
        were given."""
        items: dict[str, str] = {}
        pending: dict[str, float] = {}
        by_class: dict[str, dict[str, float]] = {}
        audits: dict[str, float] = {}
        not_audits: set[str] = set()  # re-added after a relabel, it may have been an audit
        count = 0
        for record in records:
            key, label = record.source_key, record.label or ""
            score = order_score(self.order, record)
            item = {"label": label, "etag": record.source_etag, "at": record.created_at}
            items[key] = json.dumps(item)
            pending[key] = score
            by_class.setdefault(label, {})[key] = score
            if record.audit:  # the last record given for a key decides, as one by one would
                audits[key] = score
                not_audits.discard(key)
            else:
                not_audits.add(key)
                audits.pop(key, None)
            count += 1
        if not count:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._key("items"), mapping=items)
        pipe.zadd(self._key("pending"), pending)
        for label, scores in by_class.items():
            pipe.zadd(self._key("class", label), scores)
        if audits:
            pipe.zadd(self._key("audit"), audits)
        if not_audits:
            pipe.zrem(self._key("audit"), *not_audits)
        pipe.sadd(self._key("classes"), *by_class)
        pipe.execute()
        return count

    def add_label_issues(self, issues: Iterable[Any], at: float | None = None) -> int:
        """Queue training images whose folder is doubted (objects with ``key``, ``given``,
        ``suggested``, ``quality``); the member is ``/training/<key>``. Returns the count."""
        now = time.time() if at is None else at
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for issue in issues:
            member = LABEL_ISSUE_MEMBER + issue.key
            item = {
                "label": issue.given,
                "at": now,
                "label_issue": True,
                "suggested": issue.suggested,
                "quality": issue.quality,
            }
            score = {member: issue_score(self.order, member, float(issue.quality), now)}
            pipe.hset(self._key("items"), member, json.dumps(item))
            pipe.zadd(self._key("pending"), score)
            pipe.zadd(self._key("class", issue.given), score)
            pipe.zadd(self._key("issue"), score)
            pipe.sadd(self._key("classes"), issue.given)
            count += 1
        if count:
            pipe.execute()
        return count

    def claim(self, *, label: str | None = None, prefix: str = "") -> Claim | None:
        """Lease the next free item (of predicted ``label``, under ``prefix``), or None.

        Under the ``uncertainty`` order without a prefix, classes take turns (audits at their
        share); otherwise the set is walked in score order."""
        index = self._key("class", label) if label else self._key("pending")
        token = secrets.token_hex(16)
        lease_ms = int(self.lease_seconds * 1000)
        start, found = 0, None
        if self.order == "uncertainty" and not prefix:
            args = [self._ns, token, lease_ms, label or "", self._max_scan]
            found = self._balanced(args=args)
            start = self._max_scan  # one call: every lane starts at rank 0
        while start < self._max_scan:
            budget = min(SCAN_PER_CALL, self._max_scan - start)
            args = [self._ns, token, lease_ms, prefix, start, budget]
            found = self._claim(keys=[index], args=args)
            if not isinstance(found, int):
                break
            start = found  # a stretch without a free match: go on where it stopped
        if not found or isinstance(found, int):
            return None
        key = _text(found[0])
        item = _item(key, found[1])
        return Claim(item, token, time.time() + self.lease_seconds)

    def holds(self, key: str, token: str) -> bool:
        """True while ``token`` still holds the lease on ``key``."""
        current = self._redis.get(self._key("lease", key))
        return current is not None and _text(current) == token

    def release(self, key: str, token: str) -> None:
        """Give the item back to the queue (if our lease is still the current one)."""
        self._release(keys=[self._key("lease", key)], args=[token])

    def skip(self, key: str, token: str) -> None:
        """Release the item and move it to the back of the queue."""
        if not self.holds(key, token):
            return
        back = {key: back_score(self.order, time.time())}
        raw = self._redis.hget(self._key("items"), key)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._key("pending"), back, xx=True)
        for lane in _LANES:
            pipe.zadd(self._key(lane), back, xx=True)
        if raw is not None:
            pipe.zadd(self._key("class", _item(key, raw).label), back, xx=True)
        pipe.execute()
        self.release(key, token)

    def remove(self, key: str) -> None:
        """Take ``key`` out of the queue (decided, stale, or gone). Safe to repeat."""
        raw = self._redis.hget(self._key("items"), key)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(self._key("pending"), key)
        for lane in _LANES:
            pipe.zrem(self._key(lane), key)
        if raw is not None:
            pipe.zrem(self._key("class", _item(key, raw).label), key)
        pipe.hdel(self._key("items"), key)
        pipe.delete(self._key("lease", key))
        pipe.execute()

    def update(self, record: LabelRecord) -> None:
        """Re-index a record a newer model re-scored; a reviewer's lease on it stays."""
        old = self.get(record.source_key)
        if old is not None and old.label != (record.label or ""):
            self._redis.zrem(self._key("class", old.label), record.source_key)
        self.add(record)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every pending source key (under ``prefix``; label issues are training images, not
        records), read in slices: for relabeling, not for serving."""
        match = None if not prefix else _glob_escape(prefix) + "*"
        for raw, _ in self._redis.hscan_iter(self._key("items"), match=match, count=1000):
            if not (key := _text(raw)).startswith(LABEL_ISSUE_MEMBER):
                yield key

    def get(self, key: str) -> QueuedItem | None:
        raw = self._redis.hget(self._key("items"), key)
        return None if raw is None else _item(key, raw)

    def pending(self) -> int:
        return int(self._redis.zcard(self._key("pending")))

    def kinds(self) -> dict[str, int]:
        """Pending items by kind: low-confidence labels, blind audits and label issues."""
        pipe = self._redis.pipeline(transaction=False)
        for name in ("pending", *_LANES):
            pipe.zcard(self._key(name))
        pending, audits, issues = (int(n) for n in pipe.execute())
        return {
            "low_confidence": pending - audits - issues,
            "audits": audits,
            "label_issues": issues,
        }

    def counts(self) -> dict[str, int]:
        """Pending items per predicted class (classes with none left are omitted)."""
        labels = sorted(_text(raw) for raw in self._redis.smembers(self._key("classes")))
        pipe = self._redis.pipeline(transaction=False)
        for label in labels:
            pipe.zcard(self._key("class", label))
        return {label: int(n) for label, n in zip(labels, pipe.execute(), strict=True) if n}

    def tally(self, predicted: str, outcome: str) -> None:
        """Count one first decision, for the measured precision of automatic labels."""
        self._redis.hincrby(self._key("tally"), f"{predicted}\t{outcome}", 1)

    def tallies(self) -> dict[str, dict[str, int]]:
        """Decisions so far per predicted class: ``{label: {outcome: n}}``."""
        result: dict[str, dict[str, int]] = {}
        for field, n in self._redis.hgetall(self._key("tally")).items():
            label, _, outcome = _text(field).rpartition("\t")
            result.setdefault(label, {})[outcome] = int(n)
        return result

    def clear(self) -> None:
        """Drop the whole index (leases expire by themselves)."""
        names = [self._key(name) for name in _INDEX]
        self._redis.delete(*names, *(self._key("class", label) for label in self._labels()))

    def rebuild(self, records: Iterable[LabelRecord], chunk: int = 1000) -> int:
        """Replace the index with the records that still wait for review; returns their count.

        The new index is built under a private namespace and swapped in with one transaction,
        so reviewers keep the old queue meanwhile instead of an empty one."""
        staging = ReviewQueue(
            self._redis, namespace=f"{self._ns}:rebuild:{secrets.token_hex(8)}", order=self.order
        )
        try:
            total, batch = 0, []
            for record in records:
                if record.waits_for_review:
                    batch.append(record)
                if len(batch) >= chunk:
                    total += staging.add_many(batch)
                    batch = []
            total += staging.add_many(batch)
            total += staging.add_label_issues(self._queued_label_issues())
        except BaseException:
            staging.clear()
            raise
        old, new = self._labels(), staging._labels()
        parts_list = [*((name,) for name in _INDEX), *(("class", x) for x in new)]
        built = self._redis.pipeline(transaction=False)
        for parts in parts_list:
            built.exists(staging._key(*parts))
        exists = built.execute()  # the staging keys are private: nothing changes them meanwhile
        pipe = self._redis.pipeline(transaction=True)
        if old - new:
            pipe.delete(*(self._key("class", label) for label in old - new))
        for parts, there in zip(parts_list, exists, strict=True):
            if there:  # RENAME replaces what was there
                pipe.rename(staging._key(*parts), self._key(*parts))
            else:
                pipe.delete(self._key(*parts))
        pipe.execute()
        return total

    def _queued_label_issues(self) -> list[_LabelIssue]:
        """The label issues queued now: they come from a search, not from labels/, so a rebuild
        carries them over (at most the search's cap, a thousand or so)."""
        members = [_text(raw) for raw in self._redis.zrange(self._key("issue"), 0, -1)]
        if not members:
            return []
        raws = self._redis.hmget(self._key("items"), members)
        issues = []
        for member, raw in zip(members, raws, strict=True):
            if raw is not None:
                data = json.loads(raw)
                key = member[len(LABEL_ISSUE_MEMBER) :]
                issues.append(
                    _LabelIssue(key, data["label"], data["suggested"], data.get("quality", 0.0))
                )
        return issues

    def _labels(self) -> set[str]:
        return {_text(raw) for raw in self._redis.smembers(self._key("classes"))}

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))


@dataclass(frozen=True)
class _LabelIssue:
    key: str
    given: str
    suggested: str
    quality: float


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _item(key: str, raw: bytes | str | None) -> QueuedItem:
    data = json.loads(raw) if raw else {}
    return QueuedItem(
        key,
        data.get("label", ""),
        data.get("etag"),
        float(data.get("at", 0.0)),
        bool(data.get("label_issue", False)),
        data.get("suggested"),
    )
