"""An HTTP proxy in front of the S3 server that counts the body bytes each response delivered and,
when asked to, fails on purpose: 503s, slow answers, outages.

Responses are streamed in small chunks through a small send buffer, so when a client closes a
connection without reading the body (as the worker does for an oversized object) the proxy stops
within a few hundred KB: the count is what reached the client, not what the server had.

Faults are deterministic for a given seed, bounded, loopback only. The proxy counts what it did so
tests can compare with what the system reports.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote, urlsplit

from testbed.services import free_port

CHUNK_BYTES = 64 * 1024
SEND_BUFFER_BYTES = 64 * 1024  # the kernel holds at most this much the client has not taken
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "upgrade",
    "expect",
}


@dataclass
class Exchange:
    """One forwarded request and how much of its response body went out."""

    method: str
    path: str  # URL-decoded, without the query
    status: int
    content_length: int | None
    body_bytes_sent: int = 0
    cut_by_client: bool = False


class S3Proxy:
    """Forwards to ``127.0.0.1:target_port`` and records an :class:`Exchange` per forwarded request.

    ``error_rate`` of requests get a 503 SlowDown, ``slow_rate`` wait ``slow_seconds`` first;
    ``down()`` refuses every request with 503; ``hold()`` keeps every new request waiting until
    ``release()``, which answers the held ones with 503 (their clients are killed meanwhile, in
    the tests that hold: a late forward would write for a dead process). With the defaults every
    request is forwarded.
    """

    def __init__(
        self,
        target_port: int,
        *,
        error_rate: float = 0.0,
        slow_rate: float = 0.0,
        slow_seconds: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.target_port = target_port
        self.error_rate = error_rate
        self.slow_rate = slow_rate
        self.slow_seconds = slow_seconds
        self.is_down = False
        self.held: list[tuple[str, str]] = []  # (method, decoded path) of requests now held
        self._released = threading.Event()
        self._released.set()
        self.injected_errors = 0
        self.forwarded = 0
        self.exchanges: list[Exchange] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def hold(self) -> None:
        """Keep every request that arrives from now on waiting (it is listed in ``held``)."""
        self._released.clear()

    def release(self) -> None:
        """Answer the held requests with 503 and forward new ones again."""
        self._released.set()

    def holding(self, path_part: str) -> bool:
        """Whether a request for a path containing ``path_part`` is held now."""
        with self._lock:
            return any(path_part in path for _, path in self.held)

    def wait_if_held(self, method: str, path: str) -> bool:
        """Called for each request: True when it was held (and must now be refused)."""
        if self._released.is_set():
            return False
        entry = (method, unquote(urlsplit(path).path))
        with self._lock:
            self.held.append(entry)
        self._released.wait()
        with self._lock:
            self.held.remove(entry)
            self.injected_errors += 1
        return True

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def decide(self) -> Literal["fail", "slow", "pass"]:
        """``fail``, ``slow`` or ``pass`` for the next request."""
        with self._lock:
            if self.is_down or self._random.random() < self.error_rate:
                self.injected_errors += 1
                return "fail"
            self.forwarded += 1
            return "slow" if self._random.random() < self.slow_rate else "pass"

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def gets_of(self, path_suffix: str) -> list[Exchange]:
        """The GETs whose decoded path ends with ``path_suffix``."""
        with self._lock:
            return [e for e in self.exchanges if e.method == "GET" and e.path.endswith(path_suffix)]


def _handler(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if proxy.wait_if_held(self.command, self.path):
                try:
                    self._slow_down()
                except OSError:  # its client was killed while it was held
                    self.close_connection = True
                return
            verdict = proxy.decide()
            if verdict == "fail":
                self._slow_down()
                return
            if verdict == "slow":
                time.sleep(proxy.slow_seconds)
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                self._relay(upstream.getresponse())
            finally:
                upstream.close()

        def _slow_down(self) -> None:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(_SLOW_DOWN)

        def _relay(self, response: http.client.HTTPResponse) -> None:
            declared = response.getheader("Content-Length")
            exchange = Exchange(
                self.command,
                unquote(urlsplit(self.path).path),
                response.status,
                int(declared) if declared is not None else None,
            )
            proxy.record(exchange)
            payload = None if declared is not None else response.read()  # chunked: buffer it
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(name, value)
            length = declared if payload is None else str(len(payload))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                if payload is not None:
                    self.wfile.write(payload)
                    exchange.body_bytes_sent = len(payload)
                    return
                while chunk := response.read(CHUNK_BYTES):
                    self.wfile.write(chunk)
                    exchange.body_bytes_sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                exchange.cut_by_client = True
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
