"""The unit tier: in-process only. Anything that starts a process or opens a network connection
fails here, so a test that needs a server belongs beside the end-to-end tests instead."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _no_processes_or_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the unit tier starts no process and talks to no server")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _pillow_limit_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure_pillow sets a process-wide limit: one test's choice must not reach the next.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
