"""What ``labeler status`` finds out: one real round trip per probe, gathered into a report.

Components come from the running stack's record (``DATA_DIR/run/stack.json``) or, for a stack
started otherwise (docker compose), from the /healthz URLs given on the command line. A worker
is up when its /healthz answers and a Celery ping reaches it; a component with neither (beat
under ``labeler up``) is up while its process lives.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from labeler.activity import SAMPLE_SECONDS, counter_totals, images_finished
from labeler.cli_common import broker_problem
from labeler.settings import Settings
from labeler.stack_record import StackRecord, pid_alive
from labeler.wiring import Stores, build_app, sqs_client
from storage import Area, ObjectNotFound
from storage.keys import report_key
from tasks.contracts import QUEUES
from tasks.queues import queue_depths
from workers.dispatch import SqsUnavailable, queue_backlog
from workers.review import QualityLedger, ReviewQueue, label_quality

HTTP_TIMEOUT = 3.0
STALE_SECONDS = 6 * SAMPLE_SECONDS  # an older sample means the sampler is stuck
REDIS = "redis"  # the private redis-server's component name under `labeler up`
PING_TIMEOUT = 2.0


@dataclass
class ComponentStatus:
    name: str
    up: bool
    detail: str
    url: str | None = None
    celery_node: str | None = None
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None


@dataclass
class EventSourceStatus:
    """The SQS queue the dispatcher reads, as this process reaches it with the same client."""

    queue_url: str
    endpoint_url: str  # what the client connects to
    region: str
    reachable: bool
    detail: str  # "answers" or what is wrong
    waiting: int | None = None
    in_flight: int | None = None


@dataclass
class StackStatus:
    broker_url: str
    broker: str  # "ok" or what is wrong
    source: str  # where the component list came from
    components: list[ComponentStatus] = field(default_factory=list)
    celery_nodes: list[str] = field(default_factory=list)
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    review_pending: int | None = None  # records waiting for a reviewer (the review index)
    review_kinds: dict[str, int] = field(default_factory=dict)  # low-confidence, audits, issues
    images: dict[str, int] = field(default_factory=dict)  # since the workers started
    last_minute: dict[str, int] | None = None  # sampled by `labeler up`
    retrains: dict[str, int] = field(default_factory=dict)  # since the workers started
    model: dict[str, Any] | None = None
    last_retrain: dict[str, Any] | None = None
    next_retrain: dict[str, Any] | None = None
    label_quality: dict[str, Any] | None = None  # audited precision, reviewed agreement
    event_source: EventSourceStatus | None = None  # LABELER_EVENTS_SQS_URL, when set

    @property
    def ok(self) -> bool:
        source_ok = self.event_source is None or self.event_source.reachable
        return self.broker == "ok" and all(c.up for c in self.components) and source_ok

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **asdict(self)}, indent=2)


def probe(settings: Settings, record: StackRecord | None, urls: dict[str, str]) -> StackStatus:
    """Ask every part of the stack; never raises for a part that does not answer."""
    components = _components(record, urls)
    status = StackStatus(
        broker_url=settings.broker_url,
        broker=_broker(settings),
        source=f"labeler up, pid {record.pid}" if record else "the given URLs",
    )
    if status.broker == "ok":
        status.queues, status.review_pending, status.review_kinds = _queues(settings)
        status.celery_nodes = _celery_nodes(settings)
    for component in components:
        _check(component, status.celery_nodes)
        if component.name == REDIS and status.broker != "ok":  # the stack's private broker
            component.up, component.detail = False, f"broker {status.broker}"
    status.components = components
    status.event_source = _event_source(settings)
    bases = [c.url for c in components if c.url]
    status.images = images_finished(bases)
    status.retrains = counter_totals(bases, "labeler_retrains", "outcome")
    if record is not None and record.recent and time.time() - record.recent["at"] < STALE_SECONDS:
        status.last_minute = {k: int(v) for k, v in record.recent.items() if k != "at"}
    status.model, status.last_retrain = _models(settings)
    if status.broker == "ok":
        status.label_quality = _label_quality(settings, status.model)
    status.next_retrain = _next_retrain(settings.retrain_cron)
    return status


def _components(record: StackRecord | None, urls: dict[str, str]) -> list[ComponentStatus]:
    found: dict[str, ComponentStatus] = {}
    for state in record.components if record else []:
        url = f"http://127.0.0.1:{state.metrics_port}" if state.metrics_port else None
        found[state.name] = ComponentStatus(
            state.name,
            False,
            "",
            url,
            state.celery_node,
            state.pid,
            state.restarts,
            state.last_exit,
        )
    for name, url in urls.items():
        node = name.split("-worker")[0] if name.endswith("-worker") else None
        found[name] = ComponentStatus(name, False, "", url.rstrip("/"), node)
    return list(found.values())


def _check(component: ComponentStatus, nodes: list[str]) -> None:
    problems = []
    if component.url:
        problem = _healthz(component.url)
        if problem:
            problems.append(problem)
    if component.celery_node and not any(n.startswith(f"{component.celery_node}@") for n in nodes):
        problems.append("no reply to a Celery ping")
    alive = component.pid is not None and pid_alive(component.pid)
    if not component.url and not component.celery_node and not alive:
        problems.append("its process is gone")
    component.up = not problems
    component.detail = "; ".join(problems) if problems else "answers"


def _healthz(base: str) -> str | None:
    try:
        # base is http(s)://: the record writes it, `labeler status` checks a given one
        with urllib.request.urlopen(f"{base}/healthz", timeout=HTTP_TIMEOUT) as reply:  # noqa: S310
            return None if reply.status == 200 else f"/healthz: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"/healthz: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:
        return f"/healthz does not answer ({getattr(exc, 'reason', exc)})"


def _event_source(settings: Settings) -> EventSourceStatus | None:
    """One GetQueueAttributes, one try, short timeouts: quick even when the endpoint is down."""
    if settings.events_sqs_url is None:
        return None
    client = sqs_client(settings, probe=True)
    found = EventSourceStatus(
        settings.events_sqs_url, client.meta.endpoint_url, client.meta.region_name, False, ""
    )
    try:
        found.waiting, found.in_flight = queue_backlog(client, settings.events_sqs_url)
    except SqsUnavailable as exc:
        found.detail = f"unreachable: {exc}"
    else:
        found.reachable, found.detail = True, "answers"
    finally:
        client.close()
    return found


def _broker(settings: Settings) -> str:
    problem = broker_problem(settings, timeout=3)
    return "ok" if problem is None else f"does not answer: {problem}"


def _queues(settings: Settings) -> tuple[dict[str, dict[str, int]], int, dict[str, int]]:
    """Depth of each task queue, and how many records wait in the review queue."""
    client = redis.Redis.from_url(
        settings.broker_connection_url(), socket_connect_timeout=3, socket_timeout=3
    )
    try:
        depths = queue_depths(client, QUEUES)
        queue = ReviewQueue(client)
        pending, kinds = queue.pending(), queue.kinds()
    finally:
        client.close()
    return {q: {s: n for (q2, s), n in depths.items() if q2 == q} for q in QUEUES}, pending, kinds


def _label_quality(settings: Settings, model: dict[str, Any] | None) -> dict[str, Any]:
    """The audited precision of the production version's automatic labels, and the thresholds
    of classes whose upper bound is under the target."""
    client = redis.Redis.from_url(
        settings.broker_connection_url(), socket_connect_timeout=3, socket_timeout=3
    )
    try:
        version = model["version"] if model else None
        quality = label_quality(
            QualityLedger(client), version, settings.auto_label_target_precision
        )
    finally:
        client.close()
    thresholds: dict[str, float] = {}
    if model and quality["below_target"]:
        meta = Stores(settings).registry().metadata(model["version"])
        thresholds = {c: meta.threshold_for(c) for c in quality["below_target"]}
    quality["thresholds"] = thresholds
    return quality


def _celery_nodes(settings: Settings) -> list[str]:
    app = build_app(settings)
    try:
        replies = app.control.ping(timeout=PING_TIMEOUT) or []
    finally:
        app.close()
    return sorted(node for reply in replies for node in reply)


def _models(settings: Settings) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The production model, and the newest evaluated version (the last retrain's outcome)."""
    stores = Stores(settings)
    registry = stores.registry()
    alias = registry.production()
    model = None
    if alias is not None:
        meta = registry.metadata(alias.version)
        model = {
            "name": meta.name,
            "version": meta.version,
            "source": meta.source,
            "runtime": meta.library_versions,
            "promoted_at": _iso(alias.promoted_at),
        }
    reports = stores.area(Area.REPORTS)
    for version in reversed(registry.versions()):
        try:
            document = json.loads(
                reports.get(report_key(registry.name, version, "evaluation.json")).data
            )
        except ObjectNotFound:
            continue
        created = registry.metadata(version).created_at
        outcome = "passed the gate" if document["gate"]["passed"] else "refused by the gate"
        return model, {
            "version": version,
            "outcome": outcome,
            "at": _iso(created),
            "age_seconds": round(time.time() - created),
        }
    return model, None


def _next_retrain(cron: str) -> dict[str, Any]:
    from celery.schedules import crontab

    now = datetime.now(UTC)
    schedule = crontab(*cron.split(), nowfun=lambda: now)
    delta = schedule.remaining_estimate(now)
    return {
        "cron": cron,
        "at": (now + delta).isoformat(timespec="seconds"),
        "in_seconds": round(delta.total_seconds()),
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
