"""Intake backpressure: pause at a high-water mark of queued images, resume below a low one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitoring.metrics import Metrics
from workers.dispatch.errors import redis_errors

log = logging.getLogger(__name__)


class Backpressure:
    """Reads the backlog at most every ``check`` seconds, counting what was sent in between."""

    def __init__(
        self, backlog: Callable[[], int], metrics: Metrics, high: int, low: int, check: float
    ) -> None:
        self._backlog = backlog
        self._metrics = metrics
        self._high, self._low, self._check = high, low, check
        self._paused = False
        self._read_at = float("-inf")
        self._level = 0

    def sent(self, images: int) -> None:
        """Count images enqueued since the backlog was last read."""
        self._level += images

    def paused(self, now: float) -> bool:
        """Whether intake should pause now (``now`` in the dispatcher's clock seconds)."""
        if now - self._read_at >= self._check:
            with redis_errors("read the backlog"):
                self._level = self._backlog()
            self._read_at = now
        if not self._paused and self._level >= self._high:
            self._paused = True
            self._metrics.dispatcher_paused.set(1)
            log.warning(
                "pausing intake: %d images queued (high-water %d); resuming below %d",
                self._level,
                self._high,
                self._low,
            )
        elif self._paused and self._level < self._low:
            self._paused = False
            self._metrics.dispatcher_paused.set(0)
            log.info("resuming intake: %d images queued", self._level)
        return self._paused
