"""Next-item latency of the review app with 100,000 pending items (issue 14: p95 < 50 ms).

A private redis-server holds the review index with ``--pending`` items over 10 classes; the
oldest ``--requests`` of them have a record and an image in a ``file://`` store (the app reads
only the item it hands out, so the rest need none). The real app runs under uvicorn in this
process and is asked over HTTP (one keep-alive connection), as the page asks it:

- ``next``: ``GET /api/next`` (lease from the index, read the record, HEAD the image), then
  the item leaves the queue as a decision would (not timed);
- ``next_by_class``: the same with ``?label=<class>`` (the per-class index);
- ``claim_only``: the index alone (``ReviewQueue.claim``), without HTTP or storage.

Writes ``bench/results/review.json``; figures are recorded, never asserted.

    .venv/bin/python -m bench.review [--pending 100000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import uvicorn

from bench.deployment import Services
from bench.header import phase, run_header, trusted, write_result
from labeler.settings import Settings
from review import ReviewConfig, Reviewers, create_app
from storage import LabelRecord, LocalStore, Prediction, label_key
from testbed.services import free_port
from testbed.waiting import wait_until
from workers.review import ReviewDesk, ReviewQueue

CLASSES = [str(d) for d in range(10)]
TARGET_P95_MS = 50.0
WARM_UP = 50


def record_for(n: int) -> LabelRecord:
    label = CLASSES[n % len(CLASSES)]
    return LabelRecord(
        source_key=f"bench/{n:06d}.png",
        source_etag="unset",
        model_name="bench",
        model_version=1,
        label=label,
        score=0.4,
        top_k=[Prediction(label=label, score=0.4)],
        needs_review=True,
        created_at=1_000_000.0 + n,
    )


def fill(queue: ReviewQueue, incoming: LocalStore, labels: LocalStore, args: Any) -> None:
    """The index with every item; records and images for the ones the phases will hand out."""
    # warm-up + `next` take the oldest items; `next_by_class` then every 10th one after them.
    with_files = WARM_UP + args.requests + len(CLASSES) * (args.requests // 2 + 10)
    png = _png()
    batch = []
    for n in range(args.pending):
        record = record_for(n)
        if n < with_files:
            record.source_etag = incoming.put(record.source_key, png).etag
            labels.put(label_key(record.source_key), record.model_dump_json().encode())
        batch.append(record)
        if len(batch) == 5000:
            queue.add_many(batch)
            batch = []
    queue.add_many(batch)


def _png() -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("L", (8, 8), 128).save(out, format="PNG")
    return out.getvalue()


def timed(count: int, call: Callable[[], str | None], after: Callable[[str], None]) -> list[float]:
    """Milliseconds per ``call``; ``after`` (untimed) takes the item out like a decision."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        key = call()
        latencies.append((time.perf_counter() - started) * 1000)
        if key is None:
            raise RuntimeError("the queue ran dry: raise --pending or lower --requests")
        after(key)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "requests": len(ordered),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "max_ms": round(ordered[-1], 3),
    }


def serve(app: Any) -> tuple[uvicorn.Server, int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_until(lambda: server.started, 30, "uvicorn")
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    result: dict[str, Any] = {"header": run_header(), "pending": args.pending}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-review-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        services = Services(root, stack)
        client = redis.Redis.from_url(services.redis_url(0))
        queue = ReviewQueue(client, lease_seconds=600)
        incoming, labels = LocalStore(root / "incoming"), LocalStore(root / "labels")
        started = time.perf_counter()
        fill(queue, incoming, labels, args)
        result["fill_seconds"] = round(time.perf_counter() - started, 1)
        desk = ReviewDesk(incoming, labels, LocalStore(root / "training"), queue)
        config = ReviewConfig(
            Reviewers({}),
            "bench",
            classes=lambda: list(CLASSES),
            max_pixels=Settings().max_image_pixels,
        )
        server, port = serve(create_app(desk, config))
        stack.callback(lambda: setattr(server, "should_exit", True))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def next_item(query: str = "") -> str | None:
            conn.request("GET", "/api/next" + query)
            body = json.loads(conn.getresponse().read())
            return None if body["item"] is None else str(body["item"]["key"])

        def claim() -> str | None:
            found = queue.claim()
            return None if found is None else found.item.key

        timed(WARM_UP, next_item, queue.remove)  # warm-up: connections, templates, caches
        phases: dict[str, dict[str, Any]] = {}
        runs: dict[str, Callable[[], list[float]]] = {
            "next": lambda: timed(args.requests, next_item, queue.remove),
            "next_by_class": lambda: timed(
                args.requests // 2, lambda: next_item("?label=7"), queue.remove
            ),
            "claim_only": lambda: timed(args.requests, claim, queue.remove),
        }
        for name, run in runs.items():
            record: dict[str, Any] = {"pending_at_start": queue.pending()}
            with phase(record, *services.redis_pid()):
                record.update(summary(run()))
            phases[name] = record
        result["phases"] = phases
        result["target"] = {
            "p95_ms": TARGET_P95_MS,
            "met": phases["next"]["p95_ms"] < TARGET_P95_MS,
            "trusted": trusted(*phases.values()),
        }
        conn.close()
    path = write_result("review", result)
    print(json.dumps(result["phases"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
