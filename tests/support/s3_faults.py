"""An HTTP proxy in front of the S3 server that fails on purpose: 503s, slow answers, outages.

Deterministic for a given seed, bounded, loopback only. Counts what it did so tests can compare
with what the system reports.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.services import free_port

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultyS3Proxy:
    """Forwards to ``127.0.0.1:target_port``; ``error_rate`` of requests get a 503 SlowDown,
    ``slow_rate`` wait ``slow_seconds`` first; ``down()`` refuses every request with 503."""

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
        self.injected_errors = 0
        self.forwarded = 0
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

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def decide(self) -> str:
        """``fail``, ``slow`` or ``pass`` for the next request."""
        with self._lock:
            if self.is_down or self._random.random() < self.error_rate:
                self.injected_errors += 1
                return "fail"
            self.forwarded += 1
            return "slow" if self._random.random() < self.slow_rate else "pass"


def _handler(proxy: FaultyS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            verdict = proxy.decide()
            if verdict == "fail":
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(_SLOW_DOWN)
                return
            if verdict == "slow":
                time.sleep(proxy.slow_seconds)
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
            finally:
                upstream.close()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
