"""Event intake: object-created events (Redis list, SQS, inotify, reconciliation scans) become de-
duplicated, micro-batched ``classify_batch`` tasks.
"""

from workers.dispatch.config import DispatchConfig
from workers.dispatch.dispatcher import Dispatcher
from workers.dispatch.errors import BrokerUnavailable, EnqueueFailed
from workers.dispatch.events import CreatedObject, parse_event, s3_root
from workers.dispatch.inbox import EventInbox
from workers.dispatch.reconcile import Reconciler
from workers.dispatch.sqs import SqsInbox, SqsUnavailable, queue_backlog
from workers.dispatch.sqs_endpoint import SqsEndpoint, check_queue_url, sqs_endpoint
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
    "SqsEndpoint",
    "SqsInbox",
    "SqsUnavailable",
    "check_queue_url",
    "parse_event",
    "queue_backlog",
    "s3_root",
    "sqs_endpoint",
]
