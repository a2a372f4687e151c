"""How deep the Celery queues are in Redis: waiting in the list, and reserved but not acked.

kombu's Redis transport keeps a queue as a list named after it (plus one list per extra
priority step, ``<queue>\\x06\\x16<n>``) and reserved messages in the ``unacked`` hash, whose
values are ``[message, exchange, routing_key]``. A worker serving a single queue may keep its
reserved messages in hashes of its own (:func:`own_reservations`), ``unacked:<queue>``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any

_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default priority_steps
UNACKED_HASH = "unacked"  # kombu's default
_SAMPLE_MESSAGES = 200  # payloads read per backlog check; longer queues are extrapolated


def unacked_hash(queue: str) -> str:
    """The hash of messages reserved by workers that serve only ``queue``."""
    return f"{UNACKED_HASH}:{queue}"


def own_reservations(queue: str) -> dict[str, str]:
    """kombu transport options that keep a worker's reserved messages apart from other workers'.

    kombu re-delivers every message in its hash that was reserved longer ago than the sweeping
    worker's visibility timeout, whichever queue it came from. Workers with a short timeout
    therefore need a hash of their own, or they would re-deliver a long task still running.
    """
    return {
        "unacked_key": unacked_hash(queue),
        "unacked_index_key": f"unacked_index:{queue}",
        "unacked_mutex_key": f"unacked_mutex:{queue}",
    }


def _priority_lists(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]


def queue_depths(client: Any, queues: Iterable[str]) -> dict[tuple[str, str], int]:
    """``{(queue, "waiting"|"reserved"): count}`` with one round trip for the lists."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for name in _priority_lists(queue):
            pipe.llen(name)
    lengths = pipe.execute()
    depths: dict[tuple[str, str], int] = {}
    for n, queue in enumerate(names):
        chunk = lengths[n * len(_PRIORITY_STEPS) : (n + 1) * len(_PRIORITY_STEPS)]
        depths[(queue, "waiting")] = int(sum(chunk))
        depths[(queue, "reserved")] = 0
    # Reserved messages are few (workers x prefetch), so reading them all is cheap.
    pipe = client.pipeline(transaction=False)
    for name in [UNACKED_HASH, *map(unacked_hash, names)]:
        pipe.hvals(name)
    for raw in (raw for values in pipe.execute() for raw in values):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if (routing_key, "reserved") in depths:
            depths[(routing_key, "reserved")] += 1
    return depths


def messages_in_flight(client: Any, queue: str) -> Callable[[], int]:
    """``in_flight()``: messages of ``queue`` waiting or reserved by a worker (one round trip
    for the lists, one for the reservations)."""

    def in_flight() -> int:
        depths = queue_depths(client, [queue])
        return depths[(queue, "waiting")] + depths[(queue, "reserved")]

    return in_flight


def waiting_images(client: Any, queue: str, batch_max_images: int) -> Callable[[], int]:
    """``backlog()``: images in messages waiting on ``queue`` (reserved ones are not waiting).

    Counts the keys of up to ``_SAMPLE_MESSAGES`` payloads and extrapolates for longer queues; a
    message it cannot read counts as a full batch.
    """
    lists = _priority_lists(queue)

    def backlog() -> int:
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
        lengths = [int(n) for n in pipe.execute()]
        waiting = sum(lengths)
        if waiting == 0:
            return 0
        sample: list[bytes] = []
        for name, length in zip(lists, lengths, strict=True):
            if length and len(sample) < _SAMPLE_MESSAGES:
                sample += client.lrange(name, 0, _SAMPLE_MESSAGES - len(sample) - 1)
        counted = [_images_in(raw, batch_max_images) for raw in sample]
        if not counted:
            return waiting * batch_max_images
        return round(sum(counted) * waiting / len(counted))

    return backlog


def _images_in(raw: bytes, default: int) -> int:
    """Keys in one kombu message of a classify_batch task (Celery protocol 2, JSON)."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return len(kwargs["payload"]["keys"])
    except (ValueError, KeyError, TypeError):
        return default
