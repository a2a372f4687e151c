"""Event intake: object-created events (Redis list, SQS, inotify, reconciliation scans) become de-
duplicated, micro-batched ``classify_batch`` tasks.
"""

from workers.dispatch.config import DispatchConfig
from workers.dispatch.dispatcher import Dispatcher
from workers.dispatch.errors import BrokerUnavailable, EnqueueFailed
from workers.dispatch.events import CreatedObject, parse_event, s3_root
from workers.dispatch.inbox import EventInbox
from workers.dispatch.reconcile import Reconciler
from workers.dispatch.sqs import SqsInbox, SqsUnavailable
from workers.dispatch.watcher import DirectoryWatcher

__all__ = [
    "BrokerUnavailable",
    "CreatedObject",
    "DirectoryWatcher",
    "DispatchConfig",
    "Dispatcher",
    "EnqueueFailed",
    "EventInbox",
    "Reconciler",
    "SqsInbox",
    "SqsUnavailable",
    "parse_event",
    "s3_root",
]
