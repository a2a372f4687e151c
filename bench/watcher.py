"""Upload-to-label latency on the embedded default's local directory, picked up by the watcher.

A private redis-server, one ``labeler worker --queues inference`` and one ``labeler dispatch``
on a local data directory with the scan off (``LABELER_SCAN_INTERVAL_SECONDS=0``): only the
inotify watcher finds files. Each image is written to a temp file beside ``incoming/`` and
renamed in, as a careful copier does; latency is the record's ``created_at`` minus the time the
rename returned. Default batching (64 images or 500 ms). Model: the small digits CNN.

Target (issue 13): p50 at low load under ``batch_max_wait_ms`` + one batch + 0.5 s.
Writes bench/results/watcher.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.header import phase, run_header, trusted, write_result
from storage import LabelRecord
from testbed.digits import CLASSES, split_digits, train_digits_model
from testbed.processes import LABELER, WorkerProcess, labeler_env, run_labeler
from testbed.services import RedisServer
from testbed.waiting import wait_until

IMAGES, INTERVAL = 40, 0.5
BATCH_MAX_WAIT_MS = 500


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    result: dict[str, Any] = {"benchmark": "watcher upload-to-label (issue 13)", **run_header()}
    with tempfile.TemporaryDirectory(prefix="labeler-watch-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        stack.callback(server.stop)
        data = root / "data"
        env = labeler_env(
            broker_url=server.url,
            data_dir=data,
            model_name="digits",
            scan_interval_seconds=0,
            batch_max_wait_ms=BATCH_MAX_WAIT_MS,
            metrics_port=0,
        )
        train, images = split_digits()
        model = train_digits_model(root / "digits.keras", train)
        run_labeler(env, "models", "import", str(model), "--classes", ",".join(CLASSES))
        worker = WorkerProcess(env, root / "worker.log", "--queues", "inference").start()
        stack.callback(worker.stop)
        log = (root / "dispatch.log").open("ab")
        dispatcher = subprocess.Popen([*LABELER, "dispatch"], env=env, stdout=log, stderr=log)
        stack.callback(dispatcher.wait, 30)  # callbacks run last-in first-out: terminate, wait
        stack.callback(dispatcher.terminate)
        wait_until(lambda: b"dispatching events" in (root / "dispatch.log").read_bytes(), 60, "up")
        staging = data / "staging"
        staging.mkdir()
        incoming = data / "incoming" / "low"
        incoming.mkdir(parents=True)

        def drop(n: int) -> float:
            temp = staging / f"{n:03d}.png"
            temp.write_bytes(images[n % len(images)].data)
            os.rename(temp, incoming / temp.name)
            return time.time()

        for n in range(3):  # warm the worker's model and the dispatcher's connections
            drop(900 + n)
        wait_until(lambda: len(list((data / "labels" / "low").glob("*.json"))) == 3, 120, "warm")
        record: dict[str, Any] = {"images": IMAGES, "interval_s": INTERVAL}
        with phase(record, dispatcher.pid, worker.process.pid):  # type: ignore[union-attr]
            dropped = {}
            for n in range(IMAGES):
                dropped[f"{n:03d}.png"] = drop(n)
                time.sleep(INTERVAL)  # pacing the load, not waiting for a condition
            labels = data / "labels" / "low"
            wanted = {f"{name}.json" for name in dropped}
            wait_until(lambda: wanted <= {p.name for p in labels.iterdir()}, 120, "labels")
        records = {
            name: LabelRecord.model_validate_json((labels / f"{name}.json").read_bytes())
            for name in dropped
        }
    latencies = [records[name].created_at - t for name, t in dropped.items()]
    batch_s = max(r.timings.infer for r in records.values()) + max(
        r.timings.fetch + r.timings.decode for r in records.values()
    )
    bound = BATCH_MAX_WAIT_MS / 1000 + batch_s + 0.5
    record.update(
        p50_s=round(statistics.median(latencies), 3),
        p95_s=round(percentile(latencies, 0.95), 3),
        max_s=round(max(latencies), 3),
    )
    result.update(
        setup={
            "store": "local data directory, inotify watcher, scan off",
            "batch_max_wait_ms": BATCH_MAX_WAIT_MS,
            "worker": "1 process",
            "model": "digits small CNN",
        },
        low_load=record,
        target={
            "p50_under_s": round(bound, 3),
            "definition": "batch_max_wait_ms + one batch (slowest image's fetch+decode "
            "+ its batch's inference) + 0.5 s",
            "met": record["p50_s"] < bound,
        },
        trusted=trusted(record),
    )
    print(write_result("watcher", result))


if __name__ == "__main__":
    main()
