"""The event inbox: the reliable intake of a Redis events list.

An event is moved (``BLMOVE``) from the events list to ``<events>:processing`` and removed
from there (``LREM``) only once every key it carried is settled: enqueued, a duplicate, or
ignored. A restarted dispatcher first takes back whatever is left in the processing list. Run
one dispatcher per events list: a second one would take the first one's in-flight events for
abandoned ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from workers.dispatch.errors import redis_errors

log = logging.getLogger(__name__)

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


class Inbox(Protocol):
    """An event source the dispatcher takes from and acknowledges to, in two phases."""

    def ack(self, pipe: Any, settled: list[Held]) -> None:
        """Add to ``pipe`` (the transaction that marks their keys sent) what acknowledges them."""

    def acked(self, settled: list[Held]) -> None:
        """The transaction ran: finish acknowledging ``settled`` (and any left from before)."""

    def reject(self, unusable: list[Held]) -> None:
        """Give up on events none of whose records could be used."""


@dataclass(eq=False)
class Held:
    """One event taken from ``inbox``; acknowledged when ``pending`` (keys unsettled) is 0."""

    raw: bytes
    inbox: Inbox
    pending: int = 0


class EventInbox:
    """Takes events from ``events_list`` into its processing list and acknowledges them."""

    def __init__(self, redis: Any, events_list: str, take_max: int) -> None:
        self._redis = redis
        self.events_list = events_list
        self.processing_list = f"{events_list}:processing"
        self._take_max = take_max
        self._take_more = redis.register_script(_TAKE_MORE)
        self._held: Counter[bytes] = Counter()  # every taken event not yet acknowledged

    @property
    def held(self) -> int:
        """How many taken events are not acknowledged yet."""
        return sum(self._held.values())

    def take(self, timeout: float) -> list[Held]:
        """Move up to ``take_max`` events, blocking up to ``timeout`` s for the first (0: not)."""
        moved: list[bytes] = []
        with redis_errors("take"):
            if timeout > 0:
                first = self._redis.blmove(
                    self.events_list, self.processing_list, timeout, "LEFT", "RIGHT"
                )
                if first is None:
                    return []
                moved.append(first)
            more = self._take_max - len(moved)
            moved += self._take_more(keys=[self.events_list, self.processing_list], args=[more])
        return [self._hold(raw) for raw in moved]

    def recover(self) -> list[Held]:
        """Take back events in the processing list this process does not hold (a killed run's,
        or moved by a command whose reply was lost)."""
        mine = Counter(self._held)
        taken = []
        with redis_errors("recover"):
            listed = self._redis.lrange(self.processing_list, 0, -1)
        for raw in listed:
            if mine[raw] > 0:
                mine[raw] -= 1
            else:
                taken.append(self._hold(raw))
        if taken:
            log.info("recovered %d events from %s", len(taken), self.processing_list)
        return taken

    def ack(self, pipe: Any, settled: list[Held]) -> None:
        """Add the removal of ``settled`` to ``pipe``; call :meth:`acked` once it ran."""
        for held in settled:
            pipe.lrem(self.processing_list, 1, held.raw)

    def acked(self, settled: list[Held]) -> None:
        for held in settled:
            self._held[held.raw] -= 1
        self._held += Counter()  # drop the zeros

    def reject(self, unusable: list[Held]) -> None:
        """Remove events that carried nothing usable (they were logged and counted)."""
        pipe = self._redis.pipeline(transaction=True)
        self.ack(pipe, unusable)
        with redis_errors("reject"):
            pipe.execute()
        self.acked(unusable)

    def _hold(self, raw: bytes) -> Held:
        self._held[raw] += 1
        return Held(raw, self)
