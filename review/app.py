"""The review app: routes, thin handlers over :class:`workers.review.decisions.ReviewDesk`.

Pages: ``/`` (one item at a time, keyboard first), ``/login``. JSON API: ``POST /api/next``,
``POST /api/decide``, ``POST /api/skip``, ``GET /api/stats``, ``GET /api/csrf``. Images:
``GET /image?key=`` (a PNG we encode; the original bytes are never served).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from review.auth import Reviewers
from review.guards import BodyLimit, OriginGuard, ResponseHeaders
from review.security import SecurityMiddleware, csrf_token
from review.sessions import SessionMiddleware, SessionStore
from review.throttle import SignInThrottle
from storage import InvalidKey, ObjectNotFound, ObjectStore
from workers.review import (
    Action,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewError,
    ReviewItem,
    StaleItem,
    agreement_of,
    validate_item_key,
)
from workers.review.previews import (
    PREVIEW_CONTENT_TYPE,
    PREVIEW_MAX_PIXELS,
    ImageRejected,
    PreviewBusy,
    PreviewRenderer,
)

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_HELD_LEASES = 16  # lease tokens a session remembers (a few tabs, a prefetched next item)
_Body = TypeVar("_Body", bound=BaseModel)
LOCAL_REVIEWER = "local"


@dataclass(frozen=True)
class ReviewConfig:
    """What the app needs besides the desk. No ``reviewers``: one local user, 127.0.0.1 only."""

    reviewers: Reviewers
    secret_key: str
    classes: Callable[[], list[str]]  # the production model's classes, first nine get digits
    max_pixels: int  # LABELER_MAX_IMAGE_PIXELS: previews decode untrusted bytes too
    preview_side: int = 512
    preview_max_pixels: int = PREVIEW_MAX_PIXELS  # non-JPEG previews decode at full size
    secure_cookies: bool = False  # always Secure; without it, Secure when the request was https
    metrics: Callable[[], bytes] | None = None  # Prometheus exposition for /metrics
    label_quality: Callable[[], dict[str, Any]] | None = None  # audited precision, agreement


class DecideRequest(BaseModel):
    key: str
    token: str | None = None
    action: Action
    label: str | None = None


class SkipRequest(BaseModel):
    key: str
    token: str


def create_app(desk: ReviewDesk, config: ReviewConfig) -> Starlette:
    """The ASGI app; serve it with uvicorn."""
    local_user = None if config.reviewers else LOCAL_REVIEWER
    # A loopback-only app keeps its sessions apart: its cookies mean nothing to a signed-in one.
    realm = "local:" if local_user else "signed-in:"
    store = SessionStore(desk.queue.client, realm + (config.secret_key or secrets.token_hex(32)))
    templates = Jinja2Templates(directory=_HERE / "templates")
    handlers = _Handlers(desk, config, templates, store)
    routes = [
        Route("/", handlers.page),
        Route("/login", handlers.login_page, methods=["GET"]),
        Route("/login", handlers.login, methods=["POST"]),
        Route("/logout", handlers.logout, methods=["POST"]),
        Route("/image", handlers.image),
        Route("/healthz", handlers.health),
        Route("/metrics", handlers.metrics),
        Route("/api/csrf", handlers.csrf),
        # POST for the page (it leases an item); GET kept for scripts, same-origin only.
        Route("/api/next", handlers.next_item, methods=["GET", "POST"]),
        Route("/api/decide", handlers.decide, methods=["POST"]),
        Route("/api/skip", handlers.skip, methods=["POST"]),
        Route("/api/stats", handlers.stats),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    middleware = [  # outermost first
        Middleware(ResponseHeaders),
        Middleware(OriginGuard, loopback_only=local_user is not None),
        Middleware(BodyLimit),
        Middleware(SessionMiddleware, store=store, https_only=config.secure_cookies),
        Middleware(
            SecurityMiddleware, local_user=local_user, reviewers=config.reviewers, sessions=store
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


class _Handlers:
    def __init__(
        self,
        desk: ReviewDesk,
        config: ReviewConfig,
        templates: Jinja2Templates,
        sessions: SessionStore,
    ) -> None:
        self.desk = desk
        self.config = config
        self.templates = templates
        self.sessions = sessions
        self.throttle = SignInThrottle(desk.queue.client)
        self.previews = PreviewRenderer(
            max_side=config.preview_side,
            max_pixels=config.max_pixels,
            preview_max_pixels=config.preview_max_pixels,
        )

    def _loader(self, store: ObjectStore, path: str) -> Callable[[], tuple[bytes, str]]:
        def load() -> tuple[bytes, str]:
            blob = store.get(path)
            return blob.data, blob.info.etag

        return load

    async def page(self, request: Request) -> Response:
        context = {
            "csrf": csrf_token(request.session),
            "user": request.session["user"],
            "classes": await run_in_threadpool(self.config.classes),
            "signed_in": bool(self.config.reviewers),
        }
        return self.templates.TemplateResponse(request, "review.html", context)

    async def login_page(self, request: Request) -> Response:
        if not self.config.reviewers:
            return RedirectResponse("/", 303)
        context = {"csrf": csrf_token(request.session), "failed": "failed" in request.query_params}
        return self.templates.TemplateResponse(request, "login.html", context)

    async def login(self, request: Request) -> Response:
        # A two-field urlencoded form: parsed here rather than pulling in a multipart parser.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        address = request.client.host if request.client else ""
        wait = await run_in_threadpool(self.throttle.wait, name, address)
        if wait:
            log.warning("sign-in for %r from %s throttled (%d s)", name[:64], address, wait)
            return JSONResponse(
                {"error": f"too many failed sign-ins; try again in {wait} s"},
                429,
                headers={"retry-after": str(wait)},
            )
        ok = await run_in_threadpool(self.config.reviewers.check, name, password)
        if not ok:
            log.warning("failed sign-in for %r from %s", name[:64], address)
            await run_in_threadpool(self.throttle.failed, name, address)
            return RedirectResponse("/login?failed=1", 303)
        await run_in_threadpool(self.throttle.succeeded, name, address)
        log.info("%r signed in from %s", name, address)
        request.session.clear()  # a fresh session (and CSRF token) for the signed-in user
        request.session["user"] = name
        request.session["cred"] = self.config.reviewers.fingerprint(name)
        request.session["epoch"] = await run_in_threadpool(self.sessions.user_epoch, name)
        csrf_token(request.session)
        return RedirectResponse("/", 303)

    async def logout(self, request: Request) -> Response:
        user = request.session.get("user")
        if user and self.config.reviewers:  # a loopback-only app's one user has no sign-in
            await run_in_threadpool(self.sessions.end_user_sessions, str(user))
        request.session.clear()
        return RedirectResponse("/login", 303)

    async def csrf(self, request: Request) -> Response:
        return JSONResponse({"csrf": csrf_token(request.session)})

    async def health(self, request: Request) -> Response:
        try:
            pending = await run_in_threadpool(self.desk.queue.pending)  # a real Redis round trip
        except Exception as exc:  # the index is unreachable: unhealthy, and say which error
            return JSONResponse({"ok": False, "error": type(exc).__name__}, 503)
        return JSONResponse({"ok": True, "pending": pending})

    async def metrics(self, request: Request) -> Response:
        if self.config.metrics is None:
            return Response(status_code=404)
        body = await run_in_threadpool(self.config.metrics)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def next_item(self, request: Request) -> Response:
        label = request.query_params.get("label") or None
        prefix = request.query_params.get("prefix", "")
        item = await run_in_threadpool(self.desk.next_item, label=label, prefix=prefix)
        if item is not None:
            _hold(request.session, item.claim.token)
        pending = await run_in_threadpool(self.desk.queue.pending)
        return JSONResponse(
            {"item": None if item is None else _item_json(item), "pending": pending}
        )

    async def decide(self, request: Request) -> Response:
        body = await _parse(request, DecideRequest)
        if isinstance(body, Response):
            return body
        user = request.session["user"]
        try:
            _check_held(request.session, body.key, body.token)
            record = await run_in_threadpool(
                self.desk.decide, body.key, body.token, body.action, user, body.label
            )
        except (ReviewError, InvalidKey) as exc:
            return _refusal(exc)
        return JSONResponse({"record": record.model_dump(mode="json", exclude_none=True)})

    async def skip(self, request: Request) -> Response:
        body = await _parse(request, SkipRequest)
        if isinstance(body, Response):
            return body
        try:
            _check_held(request.session, body.key, body.token)
            await run_in_threadpool(self.desk.skip, body.key, body.token)
        except (ReviewError, InvalidKey) as exc:
            return _refusal(exc)
        return JSONResponse({"skipped": body.key})

    async def stats(self, request: Request) -> Response:
        queue = self.desk.queue
        pending = await run_in_threadpool(queue.pending)
        by_class = await run_in_threadpool(queue.counts)
        tallies = await run_in_threadpool(queue.tallies)
        quality = self.config.label_quality
        return JSONResponse(
            {
                "pending": pending,
                "by_class": by_class,
                "decided": tallies,
                "agreement": agreement_of(tallies),
                "label_quality": None if quality is None else await run_in_threadpool(quality),
            }
        )

    async def image(self, request: Request) -> Response:
        key = request.query_params.get("key", "")
        try:
            store, path = self.desk.image_source(key)
            info = await run_in_threadpool(store.head, path)
            png = await run_in_threadpool(
                self.previews.render, key, info.etag, self._loader(store, path)
            )
        except InvalidKey as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except ObjectNotFound:
            return JSONResponse({"error": f"no image at {key!r}"}, 404)
        except ImageRejected as exc:
            return JSONResponse({"error": f"not shown: {exc}"}, 415)
        except PreviewBusy as exc:
            return JSONResponse({"error": str(exc)}, 503, headers={"retry-after": "5"})
        return Response(png, media_type=PREVIEW_CONTENT_TYPE, headers={"cache-control": "private"})


def _item_json(item: ReviewItem) -> dict[str, Any]:
    record = item.record
    shown: dict[str, Any] = {
        "key": record.source_key,
        "token": item.claim.token,
        "lease_expires_at": item.claim.expires_at,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "labeled_at": record.created_at,
        "label_issue": item.label_issue,  # a training image whose folder is doubted
        "suggested": item.suggested,
    }
    if record.audit:  # blind: a reviewer who saw the prediction would be anchored by it
        return {**shown, "audit": True}
    prediction = {"label": record.label, "score": record.score}
    return {**shown, **prediction, "top_k": [p.model_dump() for p in record.top_k]}


async def _parse(request: Request, model: type[_Body]) -> _Body | Response:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": errors}, 400)


def _hold(session: MutableMapping[str, Any], token: str) -> None:
    """Remember that this session claimed ``token``: only it may decide or skip with it."""
    held = [t for t in session.get("leases", []) if isinstance(t, str)]
    session["leases"] = [*held, token][-_HELD_LEASES:]


def _check_held(session: MutableMapping[str, Any], key: str, token: str | None) -> None:
    validate_item_key(key)  # a bad key is a 400 whoever holds what
    if token is not None and token not in session.get("leases", []):
        raise LeaseLost("that lease was not claimed in this session")


def _refusal(exc: ReviewError | InvalidKey) -> Response:
    if isinstance(exc, (InvalidDecision, InvalidKey)):
        return JSONResponse({"error": str(exc)}, 400)
    reason = "conflict"
    if isinstance(exc, LeaseLost):
        reason = "lease_lost"
    elif isinstance(exc, StaleItem):
        reason = "stale"
    return JSONResponse({"error": str(exc), "reason": reason}, 409)
