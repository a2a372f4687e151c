"""An HTTP proxy in front of the S3 server that counts the body bytes each response delivered.

Responses are streamed in small chunks through a small send buffer, so when a client closes a
connection without reading the body (as the worker does for an oversized object) the proxy stops
within a few hundred KB: the count is what reached the client, not what the server had.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from tests.support.services import free_port

CHUNK_BYTES = 64 * 1024
SEND_BUFFER_BYTES = 64 * 1024  # the kernel holds at most this much the client has not taken
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
    """One request and how much of its response body went out."""

    method: str
    path: str  # URL-decoded, without the query
    status: int
    content_length: int | None
    body_bytes_sent: int = 0
    cut_by_client: bool = False


class CountingS3Proxy:
    """Forwards every request to ``127.0.0.1:target_port`` and records an :class:`Exchange`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def gets_of(self, path_suffix: str) -> list[Exchange]:
        """The GETs whose decoded path ends with ``path_suffix``."""
        with self._lock:
            return [e for e in self.exchanges if e.method == "GET" and e.path.endswith(path_suffix)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(proxy: CountingS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                self._relay(upstream.getresponse())
            finally:
                upstream.close()

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
