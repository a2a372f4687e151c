"""Which endpoint and region an SQS client uses for a queue URL.

A queue URL names the host that serves it. On AWS, botocore knows the endpoint of each region,
so only the region is taken from the URL; any other host (a local emulator such as moto or
ElasticMQ) is the endpoint itself. An endpoint set explicitly wins over both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")  # eu-west-1, us-gov-west-1, cn-north-1
_LEGACY_HOST = "queue.amazonaws.com"  # the oldest queue URLs: us-east-1, no region in the host
_EXAMPLE = "e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/images"


@dataclass(frozen=True)
class SqsEndpoint:
    """Where a client for one queue connects, and the region it signs for."""

    url: str | None  # None: botocore's own endpoint for the region
    region: str


def check_queue_url(queue_url: str) -> str:
    """``queue_url`` if it is a queue's URL as SQS gives it; else ValueError saying what is."""
    parts = urlsplit(queue_url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"has a port that is not a number; {_EXAMPLE}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"must be the queue's URL, http(s)://host[:port]/<account>/<queue>, not its ARN or "
            f"name; {_EXAMPLE}, or http://127.0.0.1:5000/123456789012/images for an emulator"
        )
    if not parts.path.strip("/"):
        raise ValueError(
            f"names an endpoint, not a queue: add /<account>/<queue>; {_EXAMPLE} (an endpoint of "
            "its own goes in LABELER_EVENTS_SQS_ENDPOINT_URL)"
        )
    return queue_url


def sqs_endpoint(queue_url: str, configured: str | None, region: str) -> SqsEndpoint:
    """The endpoint and region for ``queue_url``.

    Args:
        queue_url: the queue's URL (checked by :func:`check_queue_url`).
        configured: an endpoint set explicitly; used whatever the queue URL's host.
        region: the region to sign for unless the queue URL's AWS host names another.

    Raises:
        ValueError: ``queue_url`` is not a queue's URL.
    """
    parts = urlsplit(check_queue_url(queue_url))
    host = parts.hostname or ""
    aws = host.endswith(_AWS_DOMAINS)
    if aws:
        region = _region_in(host) or region
    if configured:
        return SqsEndpoint(configured, region)
    if aws:
        return SqsEndpoint(None, region)
    return SqsEndpoint(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}", region)


def _region_in(host: str) -> str | None:
    """sqs.eu-west-1.amazonaws.com, eu-west-1.queue.amazonaws.com -> eu-west-1."""
    if host == _LEGACY_HOST:
        return "us-east-1"
    return next((label for label in host.split(".") if _REGION.fullmatch(label)), None)
