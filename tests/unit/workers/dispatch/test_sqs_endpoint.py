"""Which endpoint and region an SQS queue URL is reached at, and what the SQS inbox logs while
its queue does not answer. In-process: boto3 clients are built, never connected."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from labeler.settings import Settings
from labeler.wiring import sqs_client
from workers.dispatch import SqsEndpoint, SqsInbox, SqsUnavailable, sqs_endpoint

MOTO = "http://127.0.0.1:5000/123456789012/images"


@pytest.mark.parametrize(
    ("queue_url", "configured", "expected"),
    [
        # Any host that is not AWS's is its own endpoint: scheme, host and port, no path.
        (MOTO, None, SqsEndpoint("http://127.0.0.1:5000", "us-east-1")),
        ("https://user@mq.local/queue/q", None, SqsEndpoint("https://mq.local", "us-east-1")),
        ("http://[::1]:9324/000000000000/q", None, SqsEndpoint("http://[::1]:9324", "us-east-1")),
        # AWS: botocore's endpoint, for the region the host names.
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
            None,
            SqsEndpoint(None, "eu-west-1"),
        ),
        (
            "https://sqs.us-east-1.amazonaws.com/123456789012/q",
            None,
            SqsEndpoint(None, "us-east-1"),
        ),
        ("https://eu-central-1.queue.amazonaws.com/1/q", None, SqsEndpoint(None, "eu-central-1")),
        ("https://queue.amazonaws.com/1/q", None, SqsEndpoint(None, "us-east-1")),
        ("https://sqs.cn-north-1.amazonaws.com.cn/1/q", None, SqsEndpoint(None, "cn-north-1")),
        (
            "https://sqs-fips.us-gov-west-1.amazonaws.com/1/q",
            None,
            SqsEndpoint(None, "us-gov-west-1"),
        ),
        ("https://sqs.ap-south-2.api.aws/1/q", None, SqsEndpoint(None, "ap-south-2")),
        ("https://SQS.EU-WEST-1.AMAZONAWS.COM/1/q", None, SqsEndpoint(None, "eu-west-1")),
        # An AWS host without a region in it keeps the configured one.
        ("https://vpce-0a1b.sqs.vpce.amazonaws.com/1/q", None, SqsEndpoint(None, "us-east-1")),
        # A host that only looks like AWS's is not.
        (
            "https://sqs.eu-west-1.amazonaws.com.evil.example/1/q",
            None,
            SqsEndpoint("https://sqs.eu-west-1.amazonaws.com.evil.example", "us-east-1"),
        ),
        # A configured endpoint wins; an AWS queue URL still names the region to sign for.
        (MOTO, "http://sqs.internal:9324", SqsEndpoint("http://sqs.internal:9324", "us-east-1")),
        (
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            "https://vpce-0a1b.sqs.eu-west-1.vpce.amazonaws.com",
            SqsEndpoint("https://vpce-0a1b.sqs.eu-west-1.vpce.amazonaws.com", "eu-west-1"),
        ),
    ],
)
def test_the_endpoint_a_queue_url_is_reached_at(
    queue_url: str, configured: str | None, expected: SqsEndpoint
) -> None:
    assert sqs_endpoint(queue_url, configured, "us-east-1") == expected


@pytest.mark.parametrize(
    ("queue_url", "message"),
    [
        ("arn:aws:sqs:eu-west-1:123456789012:images", "not its ARN or name"),
        ("images", "not its ARN or name"),
        ("sqs.eu-west-1.amazonaws.com/1/images", "not its ARN or name"),
        ("http:///1/images", "not its ARN or name"),
        ("http://127.0.0.1:5000", "names an endpoint, not a queue"),
        ("http://127.0.0.1:5000/", "names an endpoint, not a queue"),
        ("http://127.0.0.1:port/1/q", "port that is not a number"),
    ],
)
def test_what_is_not_a_queue_url_is_refused_saying_what_is(queue_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sqs_endpoint(queue_url, None, "us-east-1")


def _settings(**values: Any) -> Settings:
    return Settings(s3_access_key_id="k", s3_secret_access_key="s", **values)


@pytest.mark.parametrize("probe", [False, True])
def test_the_dispatcher_and_status_build_the_same_client(probe: bool) -> None:
    local = sqs_client(_settings(events_sqs_url=MOTO), probe=probe)
    assert (local.meta.endpoint_url, local.meta.region_name) == (
        "http://127.0.0.1:5000",
        "us-east-1",
    )
    aws = sqs_client(
        _settings(events_sqs_url="https://sqs.eu-west-1.amazonaws.com/1/q", s3_region="us-east-2"),
        probe=probe,
    )
    assert (aws.meta.endpoint_url, aws.meta.region_name) == (
        "https://sqs.eu-west-1.amazonaws.com",
        "eu-west-1",
    )
    # A status check tries once; the dispatcher leaves botocore's standard retries.
    assert aws.meta.config.retries.get("total_max_attempts") == (1 if probe else None)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FlakyClient:
    """Answers receive_message with nothing, or fails to connect while ``down``."""

    def __init__(self) -> None:
        self.meta = SimpleNamespace(endpoint_url="http://127.0.0.1:1")
        self.down = False

    def receive_message(self, **_: Any) -> dict[str, Any]:
        if self.down:
            raise EndpointConnectionError(endpoint_url=self.meta.endpoint_url)
        return {}


def test_an_outage_is_logged_when_it_starts_now_and_then_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, clock = _FlakyClient(), _Clock()
    inbox = SqsInbox(client, MOTO, clock=clock)
    caplog.set_level(logging.INFO, logger="workers.dispatch.sqs")

    def turn(seconds: float) -> None:
        clock.now += seconds
        with contextlib.suppress(SqsUnavailable):
            inbox.take(1, clock.now)

    turn(1)
    assert caplog.messages == []  # answering: nothing to say
    client.down = True
    for _ in range(60):  # ten minutes of failures, one every 10 s
        turn(10)
    client.down = False
    turn(10)
    turn(10)
    started, *reminders, ended = caplog.messages
    assert "SQS queue http://127.0.0.1:5000/123456789012/images" in started
    assert "(endpoint http://127.0.0.1:1) does not answer" in started
    assert 'Could not connect to the endpoint URL: "http://127.0.0.1:1"' in started
    assert len(reminders) == 1  # 300 s in; the outage ended before the next one was due
    assert "still does not answer after 300 s (31 failed calls" in reminders[0]
    assert "answers again after 600 s" in ended
