"""Next-item (claim) latency of the review index under each order at 100,000 and 1,000,000 pending.

A private redis-server holds the index: ``--pending`` items over 10 classes with margins spread
over [0, 1], 5% of them audit items. Each phase times ``ReviewQueue.claim`` (the Lua claim: under
``uncertainty`` the classes' turns and the audit share) ``--claims`` times; each claimed item
then leaves the queue as a decision would (not timed). The claim is O(log n), so p95 should
barely move from 100,000 to 1,000,000.

Writes ``bench/results/review_order.json``; figures are recorded, never asserted.

    .venv/bin/python -m bench.review_order [--sizes 100000 1000000] [--claims 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from bench.deployment import Services
from bench.header import phase, run_header, trusted, write_result
from bench.review import summary, timed
from storage import LabelRecord, Prediction
from workers.review import REVIEW_ORDERS, ReviewQueue

CLASSES = [str(d) for d in range(10)]
AUDIT_SHARE = 0.05


def record_for(n: int, rng: random.Random) -> LabelRecord:
    label, gap = CLASSES[n % len(CLASSES)], rng.random()
    top = (1.0 + gap) / 2
    audit = rng.random() < AUDIT_SHARE
    return LabelRecord.model_construct(  # validated construction would dominate a 1M fill
        source_key=f"bench/{n:07d}.png",
        source_etag="unset",
        model_name="bench",
        model_version=1,
        label=label,
        score=top,
        top_k=[Prediction(label=label, score=top), Prediction(label="x", score=top - gap)],
        needs_review=not audit,
        audit=True if audit else None,
        created_at=1_000_000.0 + n,
    )


def fill(queue: ReviewQueue, size: int) -> float:
    """Index ``size`` items; returns the seconds it took."""
    rng, started, batch = random.Random(size), time.perf_counter(), []
    for n in range(size):
        batch.append(record_for(n, rng))
        if len(batch) == 10_000:
            queue.add_many(batch)
            batch = []
    queue.add_many(batch)
    return round(time.perf_counter() - started, 1)


def measure(client: redis.Redis, size: int, claims: int, redis_pids: list[int]) -> dict[str, Any]:
    """One phase per order over an index of ``size`` items."""
    phases: dict[str, Any] = {}
    for order in REVIEW_ORDERS:
        client.flushdb()
        queue = ReviewQueue(client, lease_seconds=600, order=order)
        record: dict[str, Any] = {"fill_seconds": fill(queue, size)}
        record["pending_at_start"] = queue.pending()

        def claim(queue: ReviewQueue = queue) -> str | None:
            found = queue.claim()
            return None if found is None else found.item.key

        timed(50, claim, queue.remove)  # warm-up: the script cache, the connection
        with phase(record, *redis_pids):
            record.update(summary(timed(claims, claim, queue.remove)))
        phases[order] = record
        print(order, size, json.dumps({k: record[k] for k in ("p50_ms", "p95_ms", "p99_ms")}))
    client.flushdb()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--claims", type=int, default=2000)
    args = parser.parse_args()
    result: dict[str, Any] = {"header": run_header(), "claims": args.claims, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-order-") as tmp, ExitStack() as stack:
        services = Services(Path(tmp), stack)
        client = redis.Redis.from_url(services.redis_url(0))
        for size in args.sizes:
            result["sizes"][str(size)] = measure(client, size, args.claims, services.redis_pid())
        client.close()
    phases = [p for by_order in result["sizes"].values() for p in by_order.values()]
    result["trusted"] = trusted(*phases)
    path = write_result("review_order", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
