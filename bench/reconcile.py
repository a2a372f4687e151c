"""Reconciliation at scale: 200,000 objects in a local store, records for all but 100.

Each pass runs the real dispatcher engine (the reconciliation scan, the de-duplication ledger
on a private redis-server, batching into a recording ``enqueue``) in a child process, so its
peak RSS is its own: first over an empty incoming/ (the baseline), then over the full one.
Counted: objects listed per area, labels-listing (re)starts, keys looked up in Redis, and the
LIST requests the same pass would make on S3 (1,000 keys per page).

Target (issue 13): RSS growth < 50 MB over the empty bucket, and exactly the 100 found.
Writes bench/results/reconcile.json.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OBJECTS, UNLABELED, PER_FOLDER = 200_000, 100, 1000
CHUNK = 1000


def make_tree(root: Path) -> set[str]:
    """Objects first, then their records (so every record is newer); returns the unlabeled."""
    keys = [f"cam{n // PER_FOLDER:03d}/{n:07d}.png" for n in range(OBJECTS)]
    for folder in {k.split("/")[0] for k in keys}:
        (root / "incoming" / folder).mkdir(parents=True)
        (root / "labels" / folder).mkdir(parents=True)
    for key in keys:
        (root / "incoming" / key).write_bytes(key.encode())
    unlabeled = set(keys[:: OBJECTS // UNLABELED])
    for key in keys:
        if key not in unlabeled:
            (root / "labels" / f"{key}.json").write_bytes(b"{}")
    return unlabeled


def child(root: str, redis_url: str) -> None:
    """One reconciliation pass of the real engine; prints what it found and cost."""
    from dataclasses import replace

    import redis
    from prometheus_client import CollectorRegistry

    from labeler.settings import Settings
    from labeler.wiring import dispatch_config
    from monitoring.metrics import Metrics
    from storage import LocalStore, ObjectInfo
    from workers.dispatch import Dispatcher

    class Counted(LocalStore):
        listed = 0
        listings = 0

        def list(
            self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
        ) -> Iterator[ObjectInfo]:
            self.listings += 1
            for info in super().list(prefix, start_after=start_after, etags=etags):
                self.listed += 1
                yield info

    class CountingRedis(redis.Redis):
        looked_up = 0

        def mget(self, keys: Any, *args: Any) -> Any:
            self.looked_up += len(keys)
            return super().mget(keys, *args)

    incoming, labels = Counted(Path(root, "incoming")), Counted(Path(root, "labels"))
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(redis_url))
    sent: list[str] = []
    config = replace(
        dispatch_config(Settings()),
        events_list="bench:reconcile",
        batch_max_wait=0.0,
        scan_interval=3600,
        scan_chunk=CHUNK,
        backlog_high_water=10**9,
        backlog_low_water=0,
        poll=0.01,
    )
    engine = Dispatcher(
        client,
        incoming,
        sent.extend,
        lambda: 0,
        Metrics(CollectorRegistry()),
        config,
        labels=labels,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu = time.perf_counter(), time.process_time()
    engine.step()
    while engine.reconciling:
        engine.step()
    engine.shutdown()
    print(
        json.dumps(
            {
                "found": sorted(sent),
                "seconds": round(time.perf_counter() - started, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_before_pass_mb": round(rss_before / 1024, 1),
                "incoming_listed": incoming.listed,
                "labels_listed": labels.listed,
                "labels_listings_opened": labels.listings,
                "redis_keys_looked_up": client.looked_up,
                "s3_list_requests_equivalent": math.ceil(incoming.listed / 1000)
                + labels.listings
                + math.ceil(labels.listed / 1000),
            }
        )
    )


def run_pass(root: Path, redis_url: str, record: dict[str, Any]) -> dict[str, Any]:
    from bench.header import phase

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.reconcile", "--child", str(root), redis_url],
        stdout=subprocess.PIPE,
    )
    with phase(record, process.pid):
        out, _ = process.communicate(timeout=3600)
    assert process.returncode == 0, "the reconciliation child failed"
    record.update(json.loads(out))
    return record


def main() -> None:
    from bench.header import run_header, trusted, write_result
    from testbed.services import RedisServer

    result: dict[str, Any] = {"benchmark": "reconciliation (issue 13)", **run_header()}
    with tempfile.TemporaryDirectory(prefix="labeler-reconcile-") as tmp:
        server = RedisServer(Path(tmp, "redis")).start()
        try:
            empty = Path(tmp, "empty")
            (empty / "incoming").mkdir(parents=True)
            (empty / "labels").mkdir(parents=True)
            full = Path(tmp, "full")
            made = time.perf_counter()
            unlabeled = make_tree(full)
            setup_s = round(time.perf_counter() - made, 1)
            baseline = run_pass(empty, server.url, {})
            scan = run_pass(full, server.url, {})
        finally:
            server.stop()
    found = set(scan.pop("found"))
    baseline.pop("found")
    growth = scan["peak_rss_mb"] - baseline["peak_rss_mb"]
    result.update(
        setup={
            "objects": OBJECTS,
            "unlabeled": UNLABELED,
            "per_folder": PER_FOLDER,
            "chunk": CHUNK,
            "store": "local directory",
            "tree_written_s": setup_s,
        },
        empty_bucket=baseline,
        full_bucket=scan,
        found_exactly_the_unlabeled=found == unlabeled,
        rss_growth_mb=round(growth, 1),
        target={"rss_growth_under_mb": 50, "met": growth < 50 and found == unlabeled},
        trusted=trusted(baseline, scan),
    )
    print(json.dumps(result, indent=2))
    print(write_result("reconcile", result))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
