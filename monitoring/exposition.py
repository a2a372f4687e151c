"""Serving ``/metrics`` and ``/healthz`` from a process, single or prefork (multiprocess mode).

With prefork workers every child writes its samples to files in a shared directory
(``PROMETHEUS_MULTIPROC_DIR``, which prometheus_client reads when it is imported, so it must be
in the environment before the process starts); the parent serves their sum. The directory is
wiped at start-up so a previous run's files are not counted again, and a child that exits is
marked dead so its live gauges stop counting.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

log = logging.getLogger(__name__)

HealthCheck = Callable[[], str | None]  # None when healthy, else what is wrong


def reset_multiprocess_dir(path: Path) -> None:
    """Empty (or create) the shared directory; call once, before any child starts."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():  # the directory itself may be a mount point: keep it
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def mark_process_dead(pid: int, path: Path) -> None:
    """Stop counting a finished child's live gauges."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def exposition_registry(multiprocess_dir: Path | None) -> CollectorRegistry:
    """What ``/metrics`` serves: every process's files, or this process's default registry."""
    if multiprocess_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return registry


class MetricsServer:
    """A small HTTP server in a daemon thread: ``/metrics`` and ``/healthz``."""

    def __init__(self, port: int, registry: CollectorRegistry, health: HealthCheck) -> None:
        self.registry = registry
        self.health = health
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 - scraped
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="labeler-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("serving /metrics and /healthz on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                problem = server.health()
                body = b"ok\n" if problem is None else f"unhealthy: {problem}\n".encode()
                self._reply(200 if problem is None else 503, body, "text/plain; charset=utf-8")
            else:
                self._reply(404, b"try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every 15 s would drown the worker's log

    return Handler
