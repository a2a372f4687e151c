"""The review app: routes, thin handlers over :class:`workers.review.decisions.ReviewDesk`.

Pages: ``/`` (one item at a time, keyboard first), ``/login``. JSON API: ``GET /api/next``,
``POST /api/decide``, ``POST /api/skip``, ``GET /api/stats``, ``GET /api/csrf``. Images:
``GET /image?key=`` (a PNG we encode; the original bytes are never served).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from review.auth import Reviewers
from review.security import SecurityMiddleware, csrf_token
from storage import InvalidKey, ObjectNotFound
from workers.review import (
    Action,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewError,
    ReviewItem,
    StaleItem,
)
from workers.review.previews import PREVIEW_CONTENT_TYPE, ImageRejected, preview_png

_HERE = Path(__file__).parent
_Body = TypeVar("_Body", bound=BaseModel)
LOCAL_REVIEWER = "local"


@dataclass(frozen=True)
class ReviewConfig:
    """What the app needs besides the desk. No ``reviewers``: one local user, 127.0.0.1 only."""

    reviewers: Reviewers
    secret_key: str
    classes: Callable[[], list[str]]  # the production model's classes, first nine get digits
    preview_side: int = 512
    max_pixels: int = 50_000_000
    secure_cookies: bool = False  # set behind HTTPS
    metrics: Callable[[], bytes] | None = None  # Prometheus exposition for /metrics


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
    handlers = _Handlers(desk, config, Jinja2Templates(directory=_HERE / "templates"))
    routes = [
        Route("/", handlers.page),
        Route("/login", handlers.login_page, methods=["GET"]),
        Route("/login", handlers.login, methods=["POST"]),
        Route("/logout", handlers.logout, methods=["POST"]),
        Route("/image", handlers.image),
        Route("/healthz", handlers.health),
        Route("/metrics", handlers.metrics),
        Route("/api/csrf", handlers.csrf),
        Route("/api/next", handlers.next_item),
        Route("/api/decide", handlers.decide, methods=["POST"]),
        Route("/api/skip", handlers.skip, methods=["POST"]),
        Route("/api/stats", handlers.stats),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    local_user = None if config.reviewers else LOCAL_REVIEWER
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=config.secret_key or secrets.token_hex(32),
            session_cookie="labeler_review",
            same_site="strict",
            https_only=config.secure_cookies,
            max_age=12 * 3600,
        ),
        Middleware(SecurityMiddleware, local_user=local_user),
    ]
    return Starlette(routes=routes, middleware=middleware)


class _Handlers:
    def __init__(self, desk: ReviewDesk, config: ReviewConfig, templates: Jinja2Templates):
        self.desk = desk
        self.config = config
        self.templates = templates

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
        ok = await run_in_threadpool(self.config.reviewers.check, name, password)
        if not ok:
            return RedirectResponse("/login?failed=1", 303)
        request.session.clear()  # a fresh session (and CSRF token) for the signed-in user
        request.session["user"] = name
        csrf_token(request.session)
        return RedirectResponse("/", 303)

    async def logout(self, request: Request) -> Response:
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
            record = await run_in_threadpool(
                self.desk.decide, body.key, body.token, body.action, user, body.label
            )
        except ReviewError as exc:
            return _refusal(exc)
        return JSONResponse({"record": record.model_dump(mode="json", exclude_none=True)})

    async def skip(self, request: Request) -> Response:
        body = await _parse(request, SkipRequest)
        if isinstance(body, Response):
            return body
        try:
            await run_in_threadpool(self.desk.skip, body.key, body.token)
        except InvalidKey as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"skipped": body.key})

    async def stats(self, request: Request) -> Response:
        queue = self.desk.queue
        pending = await run_in_threadpool(queue.pending)
        by_class = await run_in_threadpool(queue.counts)
        tallies = await run_in_threadpool(queue.tallies)
        return JSONResponse(
            {
                "pending": pending,
                "by_class": by_class,
                "decided": tallies,
                "precision": precision_of(tallies),
            }
        )

    async def image(self, request: Request) -> Response:
        key = request.query_params.get("key", "")
        try:
            blob = await run_in_threadpool(self.desk.image, key)
            png = await run_in_threadpool(
                preview_png,
                blob.data,
                max_side=self.config.preview_side,
                max_pixels=self.config.max_pixels,
            )
        except InvalidKey as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except ObjectNotFound:
            return JSONResponse({"error": f"no image at {key!r}"}, 404)
        except ImageRejected as exc:
            return JSONResponse({"error": f"not shown: {exc}"}, 415)
        return Response(png, media_type=PREVIEW_CONTENT_TYPE, headers={"cache-control": "private"})


def precision_of(tallies: dict[str, dict[str, int]]) -> dict[str, float]:
    """Share of ``agreed`` among agreed + corrected decisions, per predicted class."""
    result = {}
    for label, outcomes in tallies.items():
        judged = outcomes.get("agreed", 0) + outcomes.get("corrected", 0)
        if judged:
            result[label] = outcomes.get("agreed", 0) / judged
    return result


def _item_json(item: ReviewItem) -> dict[str, Any]:
    record = item.record
    return {
        "key": record.source_key,
        "token": item.claim.token,
        "lease_expires_at": item.claim.expires_at,
        "label": record.label,
        "score": record.score,
        "top_k": [p.model_dump() for p in record.top_k],
        "model_name": record.model_name,
        "model_version": record.model_version,
        "labeled_at": record.created_at,
        "label_issue": item.label_issue,  # a training image whose folder is doubted
        "suggested": item.suggested,
    }


async def _parse(request: Request, model: type[_Body]) -> _Body | Response:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": errors}, 400)


def _refusal(exc: ReviewError) -> Response:
    if isinstance(exc, InvalidDecision):
        return JSONResponse({"error": str(exc)}, 400)
    reason = "conflict"
    if isinstance(exc, LeaseLost):
        reason = "lease_lost"
    elif isinstance(exc, StaleItem):
        reason = "stale"
    return JSONResponse({"error": str(exc), "reason": reason}, 409)
