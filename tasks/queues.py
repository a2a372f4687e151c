"""How deep the Celery queues are in Redis: waiting in the list, and reserved but not acked.

kombu's Redis transport keeps a queue as a list named after it (plus one list per extra
priority step, ``<queue>\\x06\\x16<n>``) and reserved messages in the ``unacked`` hash, whose
values are ``[message, exchange, routing_key]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default priority_steps
UNACKED_HASH = "unacked"


def queue_depths(client: Any, queues: Iterable[str]) -> dict[tuple[str, str], int]:
    """``{(queue, "waiting"|"reserved"): count}`` with one round trip for the lists."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for step in _PRIORITY_STEPS:
            pipe.llen(queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}")
    lengths = pipe.execute()
    depths: dict[tuple[str, str], int] = {}
    for n, queue in enumerate(names):
        chunk = lengths[n * len(_PRIORITY_STEPS) : (n + 1) * len(_PRIORITY_STEPS)]
        depths[(queue, "waiting")] = int(sum(chunk))
        depths[(queue, "reserved")] = 0
    # Reserved messages are few (workers x prefetch), so reading them all is cheap.
    for raw in client.hvals(UNACKED_HASH):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if (routing_key, "reserved") in depths:
            depths[(routing_key, "reserved")] += 1
    return depths


def waiting_images(client: Any, queue: str, images_per_message: int) -> int:
    """An upper bound of images queued, for backpressure: waiting messages x batch size."""
    return queue_depths(client, [queue])[(queue, "waiting")] * images_per_message
