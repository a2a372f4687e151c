"""Every request passes here once: the sign-in gate and CSRF.

A pure ASGI middleware inside :class:`review.sessions.SessionMiddleware` (which has already
loaded the server-side session into ``scope["session"]``); the headers, body limits and
cross-site checks are the outer layers in :mod:`review.guards`. A session counts as signed in
only while its user is a configured reviewer with the password the session was made with.

State-changing requests must carry the session's CSRF token, in an ``X-CSRF-Token`` header (the
page and API clients) or a ``csrf_token`` form field (the sign-in form); anything else is 403
before a handler runs.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from review.auth import Reviewers
from review.guards import SAFE_METHODS, send_json
from review.sessions import SessionStore

# Paths anyone may fetch: the sign-in page, its assets, the CSRF bootstrap, health and metrics.
PUBLIC_PATHS = ("/login", "/static/", "/api/csrf", "/healthz", "/metrics")
_MAX_FORM_BYTES = 16 * 1024


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


class SecurityMiddleware:
    """Headers on every response; 401/redirect without a session; 403 without the CSRF token."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        local_user: str | None,
        reviewers: Reviewers,
        sessions: SessionStore,
    ) -> None:
        self.app = app
        self.local_user = local_user  # set when no credentials exist (127.0.0.1 only)
        self.reviewers = reviewers
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session: MutableMapping[str, Any] = scope["session"]
        path: str = scope["path"]
        if self.local_user is not None:
            session.setdefault("user", self.local_user)
        elif session.get("user") and not await run_in_threadpool(self._valid, session):
            # Removed, password changed, signed out elsewhere, or made by a loopback-only app.
            session.clear()
        public = any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS)
        if not public and not session.get("user"):
            await _refuse_unsigned(path, send)
            return
        if scope["method"] not in SAFE_METHODS:
            receive, presented = await _presented_token(scope, receive)
            expected = session.get("csrf")
            if not (expected and presented and hmac.compare_digest(presented, expected)):
                await send_json(send, 403, {"error": "missing or wrong CSRF token"})
                return
        await self.app(scope, receive, send)

    def _valid(self, session: MutableMapping[str, Any]) -> bool:
        """The session's user is a reviewer now, with the credentials it signed in with, and
        has not signed out since."""
        user = str(session.get("user"))
        expected = self.reviewers.fingerprint(user)
        presented = session.get("cred")
        if not (expected and isinstance(presented, str)):
            return False
        current = session.get("epoch") == self.sessions.user_epoch(user)
        return current and hmac.compare_digest(str(expected), str(presented))


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
        await send_json(send, 401, {"error": "sign in first: POST /login"})
        return
    await send(
        {"type": "http.response.start", "status": 303, "headers": [(b"location", b"/login")]}
    )
    await send({"type": "http.response.body", "body": b""})


__all__ = ["PUBLIC_PATHS", "SecurityMiddleware", "csrf_token"]
