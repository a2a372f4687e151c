"""The stack's components come from Settings, and its failures reach the CLI as a message."""

from __future__ import annotations

import click
import pytest

from labeler.cli_common import failures_as_messages
from labeler.settings import load_settings
from labeler.stack import Component, CrashLoop, default_components


def test_components_take_their_ports_from_settings_and_review_has_its_own() -> None:
    settings = load_settings(metrics_port=9500, review_port=8400)
    ports = {c.name: (c.port, c.port_setting) for c in default_components(settings)}
    assert ports == {
        "inference-worker": (9500, "metrics_port"),
        "training-worker": (9501, "metrics_port"),
        "dispatcher": (9502, "metrics_port"),
        "beat": (0, "metrics_port"),
        "review": (8400, "review_port"),
    }
    off = default_components(load_settings(metrics_port=0))
    assert [c.port for c in off if c.name != "review"] == [0, 0, 0, 0]


def test_a_stack_failure_becomes_the_cli_message() -> None:
    with pytest.raises(click.ClickException) as caught, failures_as_messages():
        raise CrashLoop("beat exited 5 times within 60 s")
    assert caught.value.message == "beat exited 5 times within 60 s"
    assert Component("x", ()).port_setting == "metrics_port"
