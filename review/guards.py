"""The outer ASGI layers: security headers on every answer (errors too), bounded request bodies,
and the Host / cross-site checks that run before any session is looked at."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Nothing from another origin, no inline script or style, no plugins, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` on the
    # app's own form posts, and the cross-site check could no longer tell them apart.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A sign-in form is two short fields and a token; decisions are a key, a token and a class.
LOGIN_BODY_BYTES = 4 * 1024
API_BODY_BYTES = 16 * 1024


async def send_json(send: Send, status: int, body: Mapping[str, object], **headers: str) -> None:
    """A small JSON answer straight from a middleware."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class ResponseHeaders:
    """Outermost: the security headers on every response, and an unhandled error becomes a
    plain 500 that carries them too (the error is re-raised so the server logs it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in HEADERS}
                kept = [h for h in message.get("headers", []) if h[0] not in names]
                message["headers"] = kept + HEADERS
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if not started:
                await send_json(sending, 500, {"error": "internal error"})
            raise


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over the path's limit: from ``Content-Length`` before reading anything,
    and by counting the streamed bytes (chunked uploads declare no length)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = LOGIN_BODY_BYTES if scope["path"] == "/login" else API_BODY_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await send_json(send, 413, {"error": f"request body over {limit} bytes"})
            return
        seen, started = 0, False

        async def receiving() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        except _TooLarge:
            if not started:
                await send_json(send, 413, {"error": f"request body over {limit} bytes"})


class OriginGuard:
    """Refuses what a browser sends on another site's behalf.

    - Loopback-only mode (no credentials): the ``Host`` must be a loopback name, or a page on
      a rebinding domain (``evil.example`` -> 127.0.0.1) would be same-origin with the app.
    - State changes, the API and images are refused when ``Sec-Fetch-Site`` says another site
      made the request or, from a browser that sends no ``Sec-Fetch-Site``, when ``Origin``
      names another host.
    """

    def __init__(self, app: ASGIApp, *, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get(b"host", "")
        if self.loopback_only and not _loopback_host(host):
            await send_json(send, 400, {"error": "this app answers to loopback names only"})
            return
        path: str = scope["path"]
        guarded = scope["method"] not in SAFE_METHODS or path.startswith("/api/")
        if (guarded or path == "/image") and _cross_site(headers, host):
            log.warning("refused a cross-site %s %s", scope["method"], path)
            await send_json(send, 403, {"error": "cross-site request refused"})
            return
        await self.app(scope, receive, send)


def _cross_site(headers: Mapping[bytes, str], host: str) -> bool:
    fetch_site = headers.get(b"sec-fetch-site")
    if fetch_site is not None:  # the browser says who made the request: believe it
        return fetch_site in ("cross-site", "same-site")
    origin = headers.get(b"origin")
    if origin is None:
        return False
    try:
        return origin == "null" or urlsplit(origin).netloc.lower() != host.lower()
    except ValueError:  # not even a URL
        return True


def _loopback_host(host: str) -> bool:
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:  # a malformed Host header
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


__all__ = ["HEADERS", "BodyLimit", "OriginGuard", "ResponseHeaders", "send_json"]
