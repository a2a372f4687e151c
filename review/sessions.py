"""Server-side sessions: the cookie holds only an opaque random id, the data lives in Redis.

Ending a session is deleting its key, so sign-out takes effect at once and a replayed cookie
finds nothing. Redis keys are an HMAC of the id under the app's secret: someone who can list
Redis keys still cannot forge a cookie from them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from http.cookies import SimpleCookie
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "labeler_review"
SIGNED_IN_SECONDS = 12 * 3600  # a working day, then sign in again
ANONYMOUS_SECONDS = 15 * 60  # a CSRF token for the sign-in form: short, they cost Redis memory
_PREFIX = "labeler:review:session:"
_USER_PREFIX = "labeler:review:signed-out:"  # per user: sign-outs so far
SESSIONLESS = ("/healthz", "/metrics", "/static/")


class SessionStore:
    """Session data by id in Redis, each with a TTL."""

    def __init__(self, client: Any, secret: str) -> None:
        self._redis = client
        self._secret = secret.encode()

    def load(self, sid: str) -> dict[str, Any] | None:
        raw = self._redis.get(self._key(sid))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    def create(self, data: dict[str, Any], ttl: int) -> str:
        sid = secrets.token_urlsafe(32)
        self._redis.set(self._key(sid), json.dumps(data), ex=ttl)
        return sid

    def update(self, sid: str, data: dict[str, Any]) -> None:
        # xx: a session deleted meanwhile (signed out elsewhere) is not brought back.
        self._redis.set(self._key(sid), json.dumps(data), keepttl=True, xx=True)

    def delete(self, sid: str) -> None:
        self._redis.delete(self._key(sid))

    def user_epoch(self, user: str) -> int:
        """How many times ``user`` signed out: a session made under an older epoch is over."""
        return int(self._redis.get(self._user_key(user)) or 0)

    def end_user_sessions(self, user: str) -> None:
        """Sign-out: every session of ``user``, on every device and app process, ends now."""
        self._redis.incr(self._user_key(user))

    def _key(self, sid: str) -> str:
        digest = hmac.new(self._secret, sid.encode(), hashlib.sha256).hexdigest()
        return _PREFIX + digest

    def _user_key(self, user: str) -> str:
        digest = hmac.new(self._secret, b"user:" + user.encode(), hashlib.sha256).hexdigest()
        return _USER_PREFIX + digest


class SessionMiddleware:
    """Loads ``scope["session"]`` from the cookie's id; saves, rotates or ends it on response.

    A new id is issued whenever the session's user changes (sign-in), so an id seen before
    sign-in is worthless after it; an emptied session is deleted and its cookie expired.
    """

    def __init__(self, app: ASGIApp, *, store: SessionStore, https_only: bool) -> None:
        self.app = app
        self.store = store
        self.https_only = https_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(SESSIONLESS):
            scope["session"] = {}  # probes and assets: no Redis round trip, no session made
            await self.app(scope, receive, send)
            return
        sid = _cookie(scope)
        loaded = await run_in_threadpool(self.store.load, sid) if sid else None
        before = dict(loaded or {})
        scope["session"] = dict(before)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = await self._persist(sid if loaded is not None else None, before, scope)
                if cookie is not None:
                    message["headers"] = [*message.get("headers", []), cookie]
            await send(message)

        await self.app(scope, receive, sending)

    async def _persist(
        self, sid: str | None, before: dict[str, Any], scope: Scope
    ) -> tuple[bytes, bytes] | None:
        after: dict[str, Any] = scope["session"]
        if after == before:
            return None
        if not after:
            if sid is not None:
                await run_in_threadpool(self.store.delete, sid)
            return self._cookie_header("", 0, scope)
        if sid is not None and after.get("user") == before.get("user"):
            await run_in_threadpool(self.store.update, sid, after)
            return None
        if sid is not None:
            await run_in_threadpool(self.store.delete, sid)
        ttl = SIGNED_IN_SECONDS if after.get("user") else ANONYMOUS_SECONDS
        new_sid = await run_in_threadpool(self.store.create, after, ttl)
        return self._cookie_header(new_sid, ttl, scope)

    def _cookie_header(self, value: str, max_age: int, scope: Scope) -> tuple[bytes, bytes]:
        parts = [f"{COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly"]
        parts.append("SameSite=Strict")
        # Behind a TLS proxy uvicorn reports the scheme from X-Forwarded-Proto (trusted hops).
        if self.https_only or scope.get("scheme") == "https":
            parts.append("Secure")
        return b"set-cookie", "; ".join(parts).encode("latin-1")


def _cookie(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session, not an error
                return None
            morsel = jar.get(COOKIE)
            if morsel is not None and 0 < len(morsel.value) <= 128:
                return morsel.value
    return None


__all__ = ["COOKIE", "SessionMiddleware", "SessionStore"]
