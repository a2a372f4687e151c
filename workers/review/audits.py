"""Blind audits of automatic labels: which auto-accepted records a person also checks, and the
counts that state how right the automatic labels are.

Selection hashes (key, ETag, model version): independent of the score, so the audited records
are an unbiased sample of the auto-accepted ones, and the same record always gets the same
answer. Within each predicted class the first ``min_per_class`` auto-accepted labels of a model
version are audited too, so a rare class is measured at all; the estimate weights each class by
its share of auto-accepted labels, so that floor does not bias the overall figure.

Counts live in Redis, one hash per model version (``<ns>:v<version>``), fields
``auto\\t<class>`` (auto-accepted labels) and ``<kind>\\t<class>\\t<outcome>`` for first decisions
(kind ``audit`` or ``reviewed``). Each update is one Lua call guarded by a digest of
(key, ETag, version), so a record written twice or a decision retried counts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage import LabelRecord, ReviewOutcome
from workers.review.config import ReviewPolicy

DEFAULT_NAMESPACE = "labeler:quality"
AUDIT, REVIEWED = "audit", "reviewed"
# The guards only need to outlive retries and duplicate deliveries of one record; a version's
# guard hash lives this long after its last label (50-odd bytes per label meanwhile).
GUARD_TTL_SECONDS = 30 * 86400

# KEYS: counts hash, guard hash, versions set. ARGV: digest, field, version, guard ttl.
# Returns the record's ordinal among its class's auto-accepted labels (the first call's answer
# again on a repeat), so a retried write gets the same audit decision.
_COUNT_LABEL = """
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen then return tonumber(seen) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HSET', KEYS[2], ARGV[1], n)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
redis.call('SADD', KEYS[3], ARGV[3])
return n
"""
# KEYS: counts hash, decided set, versions set. ARGV: digest, field, version. 1 if counted now.
_COUNT_DECISION = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""
Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion.

    Args:
        successes: Observed successes (may be fractional: an effective count).
        trials: Observed trials (may be fractional); 0 gives the whole ``(0, 1)``.
        z: The normal quantile (1.96 for 95%).

    Returns:
        ``(low, high)``, both within ``[0, 1]``.

    Raises:
        ValueError: For negative counts or more successes than trials.
    """
    if trials < 0 or successes < 0 or successes > trials + 1e-9:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    p = min(1.0, successes / trials)
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * ((p * (1 - p) / trials + z2 / (4 * trials**2)) ** 0.5)
    return max(0.0, centre - half), min(1.0, centre + half)


def audit_fraction(key: str, etag: str | None, model_version: int) -> float:
    """A uniform number in ``[0, 1)`` fixed by (key, ETag, version): the record's lottery ticket."""
    digest = hashlib.blake2b(f"{key}\0{etag}\0{model_version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class VersionCounts:
    """One version's counters: ``auto[class]``, ``decisions[kind][class][outcome]``."""

    version: int
    auto: dict[str, int]
    decisions: dict[str, dict[str, dict[str, int]]]

    def outcomes(self, kind: str, label: str) -> dict[str, int]:
        return self.decisions.get(kind, {}).get(label, {})


class QualityLedger:
    """The label-quality counters in Redis (any ``redis.Redis`` client)."""

    def __init__(self, redis: Any, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._redis = redis
        self._ns = namespace
        self._count_label = redis.register_script(_COUNT_LABEL)
        self._count_decision = redis.register_script(_COUNT_DECISION)

    def count_label(self, record: LabelRecord) -> int:
        """Count an auto-accepted label once; returns its ordinal within its class and version."""
        return self.count_labels([record])[0]

    def count_labels(self, records: Sequence[LabelRecord]) -> list[int]:
        """:meth:`count_label` for several records, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for record in records:
            if record.label is None:
                raise ValueError(f"record of {record.source_key!r} has no label to count")
            v = record.model_version
            keys = [self._key(f"v{v}"), self._key(f"v{v}", "seen"), self._key("versions")]
            args = [_digest(record), f"auto\t{record.label}", v, GUARD_TTL_SECONDS]
            self._count_label(keys=keys, args=args, client=pipe)
        return [int(ordinal) for ordinal in pipe.execute()] if records else []

    def count_decision(self, record: LabelRecord, outcome: ReviewOutcome) -> bool:
        """Count a first decision on ``record`` (an audit or a reviewed low-confidence item).

        Returns:
            True when counted now, False when this (key, ETag, version) was counted before.
        """
        kind = AUDIT if record.audit else REVIEWED
        v = record.model_version
        keys = [self._key(f"v{v}"), self._key(f"v{v}", "decided"), self._key("versions")]
        args = [_digest(record), f"{kind}\t{record.label}\t{outcome.value}", v]
        return bool(self._count_decision(keys=keys, args=args))

    def versions(self) -> list[int]:
        """Model versions with any counts, oldest first."""
        return sorted(int(_text(v)) for v in self._redis.smembers(self._key("versions")))

    def counts(self, version: int) -> VersionCounts:
        auto: dict[str, int] = {}
        decisions: dict[str, dict[str, dict[str, int]]] = {}
        for raw, n in self._redis.hgetall(self._key(f"v{version}")).items():
            parts = _text(raw).split("\t")
            if parts[0] == "auto" and len(parts) == 2:
                auto[parts[1]] = int(n)
            elif len(parts) == 3:
                decisions.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = int(n)
        return VersionCounts(version, auto, decisions)

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))


class AuditSampler:
    """Decides, before a record is written, whether an auto-accepted label is also audited."""

    def __init__(self, ledger: QualityLedger, policy: ReviewPolicy) -> None:
        self.ledger = ledger
        self.policy = policy

    def select(self, record: LabelRecord) -> bool:
        """Count ``record`` if it is auto-accepted and say whether to audit it (same answer on a
        repeat). Records that need review or carry an error are neither counted nor audited."""
        return self.select_many([record])[0]

    def select_many(self, records: Sequence[LabelRecord]) -> list[bool]:
        """:meth:`select` for several records (a model batch), counted in one round trip."""
        auto = [
            i for i, r in enumerate(records) if r.ok and r.label is not None and not r.needs_review
        ]
        ordinals = self.ledger.count_labels([records[i] for i in auto])
        chosen = [False] * len(records)
        for i, ordinal in zip(auto, ordinals, strict=True):
            record = records[i]
            ticket = audit_fraction(record.source_key, record.source_etag, record.model_version)
            chosen[i] = (
                ordinal <= self.policy.audit_min_per_class or ticket < self.policy.audit_rate
            )
        return chosen


def _digest(record: LabelRecord) -> bytes:
    text = f"{record.source_key}\0{record.source_etag}\0{record.model_version}"
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
