"""How the dispatcher batches, reconciles and throttles."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DispatchConfig:
    """How the dispatcher batches, scans and throttles. Times are in seconds.

    The fields without a default come from Settings (``labeler.wiring.dispatch_config``); the
    others are internal tuning that no variable sets.
    """

    events_list: str
    batch_max_images: int
    batch_max_wait: float
    scan_interval: float  # 0: never reconcile (events only)
    backlog_high_water: int
    backlog_low_water: int
    dedup_ttl: int  # the in-flight window
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
        if self.dedup_ttl < 1:
            raise ValueError("dedup_ttl must be at least 1 second")

    @property
    def processing_list(self) -> str:
        return f"{self.events_list}:processing"
