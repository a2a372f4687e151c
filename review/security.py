"""Every request passes here once: security headers, the sign-in gate, and CSRF.

A pure ASGI middleware inside Starlette's ``SessionMiddleware`` (which has already decoded the
signed cookie into ``scope["session"]``). State-changing requests must carry the session's CSRF
token, in an ``X-CSRF-Token`` header (the page and API clients) or a ``csrf_token`` form field
(the sign-in form); anything else is 403 before a handler runs.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths anyone may fetch: the sign-in page, its assets, the CSRF bootstrap, health and metrics.
PUBLIC_PATHS = ("/login", "/static/", "/api/csrf", "/healthz", "/metrics")
_MAX_FORM_BYTES = 16 * 1024
# Nothing from another origin, no inline script or style, no plugins, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


class SecurityMiddleware:
    """Headers on every response; 401/redirect without a session; 403 without the CSRF token."""

    def __init__(self, app: ASGIApp, *, local_user: str | None) -> None:
        self.app = app
        self.local_user = local_user  # set when no credentials exist (127.0.0.1 only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        session: MutableMapping[str, Any] = scope["session"]
        path: str = scope["path"]
        if self.local_user is not None:
            session.setdefault("user", self.local_user)
        public = any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS)
        if not public and not session.get("user"):
            await _refuse_unsigned(path, send)
            return
        if scope["method"] not in SAFE_METHODS:
            receive, presented = await _presented_token(scope, receive)
            expected = session.get("csrf")
            if not (expected and presented and hmac.compare_digest(presented, expected)):
                await _json(send, 403, {"error": "missing or wrong CSRF token"})
                return
        await self.app(scope, receive, send)


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0] not in dict(HEADERS)]
            message["headers"] = headers + HEADERS
        await send(message)

    return sending


async def _presented_token(scope: Scope, receive: Receive) -> tuple[Receive, str | None]:
    """The token from the header, or from a urlencoded form (whose body is then replayed)."""
    headers = dict(scope["headers"])
    if b"x-csrf-token" in headers:
        return receive, headers[b"x-csrf-token"].decode("latin-1")
    if not headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
        return receive, None
    body, more = b"", True
    while more and len(body) <= _MAX_FORM_BYTES:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if more:
        return receive, None
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    fields = parse_qs(body.decode("utf-8", "replace"))
    values = fields.get("csrf_token")
    return replay, values[0] if values else None


async def _refuse_unsigned(path: str, send: Send) -> None:
    if path.startswith("/api/") or path == "/image":
        await _json(send, 401, {"error": "sign in first: POST /login"})
        return
    await send(
        {"type": "http.response.start", "status": 303, "headers": [(b"location", b"/login")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def _json(send: Send, status: int, body: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
