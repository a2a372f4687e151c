"""SQS as an event source: S3 notifications (direct, SNS-wrapped, or EventBridge) from a queue.

Messages are long-polled with boto3 and deleted only once every object they name is in an
enqueued batch (or found a duplicate, or ignored). While a message waits in a micro-batch its
visibility is extended, so SQS does not hand it out again. A message that cannot be parsed is
never deleted: it is made visible again at once and, after the queue's ``maxReceiveCount``,
SQS moves it to the dead-letter queue. A killed dispatcher's messages come back by themselves
when their visibility runs out. While the queue does not answer, the log says so when that
starts, now and then while it lasts, and when it ends: not at every retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from storage import TransientError
from workers.dispatch.inbox import Held

log = logging.getLogger(__name__)

_BATCH = 10  # SQS's limit per receive and per batch call
_REMIND = 300.0  # seconds between "still does not answer" lines: seen in a log tail, not flooding


class SqsUnavailable(TransientError):
    """An SQS call failed after botocore's retries; the dispatcher backs off and tries again."""


def queue_backlog(client: Any, queue_url: str) -> tuple[int, int]:
    """Messages waiting and in flight (SQS's approximate counts), in one GetQueueAttributes.

    Raises:
        SqsUnavailable: the endpoint did not answer or the queue does not exist.
    """
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    try:
        reply = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    except (BotoCoreError, ClientError) as exc:
        raise SqsUnavailable(f"SQS get_queue_attributes: {exc}") from exc
    waiting, in_flight = (int(reply["Attributes"].get(name, 0)) for name in names)
    return waiting, in_flight


class _Outage:
    """Logs that a queue stopped answering, reminds every ``_REMIND`` s, and logs its return."""

    def __init__(self, where: str, clock: Callable[[], float]) -> None:
        self._where = where
        self._clock = clock
        self._since: float | None = None
        self._told = 0.0
        self._failures = 0

    def failed(self, error: str) -> None:
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._told = now
            log.warning(
                "SQS queue %s does not answer (%s); its events wait in the queue while the "
                "dispatcher keeps trying",
                self._where,
                error,
            )
        elif now - self._told >= _REMIND:
            self._told = now
            log.warning(
                "SQS queue %s still does not answer after %.0f s (%d failed calls; last: %s)",
                self._where,
                now - self._since,
                self._failures,
                error,
            )

    def ended(self) -> None:
        if self._since is not None:
            log.info(
                "SQS queue %s answers again after %.0f s", self._where, self._clock() - self._since
            )
            self._since, self._failures = None, 0


@dataclass(eq=False)
class SqsHeld(Held):
    """A received message: its receipt handle and when its visibility was last extended."""

    handle: str = ""
    visible_from: float = 0.0  # clock seconds: when SQS would hand it out again


class SqsInbox:
    """Receives, extends and deletes messages of one queue; see the module docstring."""

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        visibility: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if visibility < 10:
            raise ValueError("the SQS visibility timeout must be at least 10 seconds")
        self._client = client
        self.queue_url = queue_url
        self._outage = _Outage(f"{queue_url} (endpoint {client.meta.endpoint_url})", clock)
        self._visibility = visibility
        self._held: dict[str, SqsHeld] = {}  # receipt handle -> message not yet deleted
        self._deleting: dict[str, SqsHeld] = {}  # settled; deleted once their markers are in

    def take(self, wait: int, now: float) -> list[SqsHeld]:
        """Receive up to 10 messages, long-polling up to ``wait`` whole seconds (0-20)."""
        with self._calling("receive_message"):
            reply = self._client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=_BATCH,
                WaitTimeSeconds=max(0, min(wait, 20)),
                VisibilityTimeout=self._visibility,
            )
        taken = []
        for message in reply.get("Messages", []):
            held = SqsHeld(
                message["Body"].encode(),
                self,
                handle=message["ReceiptHandle"],
                visible_from=now + self._visibility,
            )
            self._held[held.handle] = held
            taken.append(held)
        return taken

    def ack(self, pipe: Any, settled: list[Held]) -> None:
        """Nothing joins the Redis transaction: messages are deleted in :meth:`acked`, after it."""

    def acked(self, settled: list[Held]) -> None:
        """Delete settled messages (their objects' markers are written); a failed delete is
        tried again on the next call."""
        self._deleting.update((held.handle, held) for held in _sqs_held(settled))
        if not self._deleting:
            return
        self._call_batch("delete_message_batch", list(self._deleting.values()), {})
        for handle in self._deleting:
            self._held.pop(handle, None)
        self._deleting = {}

    def reject(self, unusable: list[Held]) -> None:
        """Make unparseable messages visible again: the queue's redrive policy dead-letters them."""
        messages = _sqs_held(unusable)
        self._call_batch("change_message_visibility_batch", messages, {"VisibilityTimeout": 0})
        for held in messages:
            self._held.pop(held.handle, None)

    def extend(self, now: float) -> None:
        """Extend the visibility of messages past half of it, so none is handed out twice."""
        due = [h for h in self._held.values() if h.visible_from - now < self._visibility / 2]
        if due:
            extra = {"VisibilityTimeout": self._visibility}
            self._call_batch("change_message_visibility_batch", due, extra)
            for held in due:
                held.visible_from = now + self._visibility

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            self._outage.failed(f"{operation}: {exc}")
            raise SqsUnavailable(f"SQS {operation}: {exc}") from exc
        self._outage.ended()

    def _call_batch(self, operation: str, messages: list[SqsHeld], extra: dict[str, Any]) -> None:
        call = getattr(self._client, operation)
        for start in range(0, len(messages), _BATCH):
            part = messages[start : start + _BATCH]
            entries = [
                {"Id": str(i), "ReceiptHandle": held.handle, **extra} for i, held in enumerate(part)
            ]
            with self._calling(operation):
                reply = call(QueueUrl=self.queue_url, Entries=entries)
            for failed in reply.get("Failed", []):
                # The message stays held by SQS: it comes back and is handled again.
                log.warning("SQS %s failed for one message: %s", operation, failed.get("Message"))


def _sqs_held(held: list[Held]) -> list[SqsHeld]:
    """``held``, each taken by an :class:`SqsInbox` (so a receipt handle comes with it)."""
    messages = [h for h in held if isinstance(h, SqsHeld)]
    if len(messages) != len(held):
        raise TypeError("an SQS inbox was handed events it did not take")
    return messages
