"""Upload-to-label latency through the dispatcher, and what the dispatcher costs per event.

A private redis-server, the moto S3 server, one ``labeler worker --queues inference`` and one
``labeler dispatch``, all real processes on this machine, with the default batching settings
(64 images or 500 ms). Each image is uploaded with boto3 and its MinIO-format event pushed right
after, as MinIO's Redis target would. Latency is the label record's ``created_at`` minus the time
the upload returned. Model: the small digits CNN the tests train (8x8 PNGs).

Target (issue 4): p50 at low load under ``batch_max_wait_ms`` + one batch's inference + 1 s.
Writes bench/results/dispatch.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from bench.header import phase, run_header, trusted, write_result
from labeler.settings import load_settings
from labeler.wiring import Stores, dispatch_config
from monitoring.metrics import Metrics
from storage import Area, LabelRecord, ObjectStore, S3Store, make_s3_client
from storage.keys import label_key
from testbed.digits import CLASSES, split_digits, train_digits_model
from testbed.events import minio_event
from testbed.processes import LABELER, WorkerProcess, labeler_env, run_labeler
from testbed.services import MotoServer, RedisServer
from testbed.waiting import wait_until
from workers.dispatch import Dispatcher

EVENTS = "labeler:events"
LOW_LOAD_IMAGES, LOW_LOAD_INTERVAL = 40, 0.5
BURST_IMAGES = 1000
ENGINE_EVENTS = 20_000
BATCH_MAX_IMAGES, BATCH_MAX_WAIT_MS, INFERENCE_BATCH = 64, 500, 32
_TICKS = os.sysconf("SC_CLK_TCK")
MOTO_CREDENTIALS = {"s3_access_key_id": "bench-key", "s3_secret_access_key": "bench-secret"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.redis_server = RedisServer(root / "redis")
        stack.callback(self.redis_server.stop)
        self.redis_server.start()
        moto = MotoServer()
        stack.callback(moto.stop)
        moto.start()
        self.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        self.env = labeler_env(
            broker_url=self.redis_server.url,
            storage_uri=f"s3://{self.bucket}/labeler",
            s3_endpoint_url=moto.endpoint_url,
            **MOTO_CREDENTIALS,
            model_name="digits",
            batch_max_images=BATCH_MAX_IMAGES,
            batch_max_wait_ms=BATCH_MAX_WAIT_MS,
            inference_batch_size=INFERENCE_BATCH,
            scan_interval_seconds=0,  # events only: the scan would find the same objects
            metrics_port=0,
        )
        self.settings = load_settings(
            **{k[8:].lower(): v for k, v in self.env.items() if k.startswith("LABELER_")}
        )
        make_s3_client(self.settings.s3_options()).boto3.create_bucket(Bucket=self.bucket)
        stores = Stores(self.settings)
        self.incoming: ObjectStore = stores.area(Area.INCOMING)
        self.labels: ObjectStore = stores.area(Area.LABELS)
        self.redis = redis.Redis.from_url(self.redis_server.url)
        train, self.images = split_digits()
        model = train_digits_model(root / "digits.keras", train)
        run_labeler(self.env, "models", "import", str(model), "--classes", ",".join(CLASSES))
        worker = WorkerProcess(self.env, root / "worker.log", "--queues", "inference")
        stack.callback(worker.stop)
        worker.start()
        self.dispatcher = self._start_dispatcher(root / "dispatch.log", stack)
        # Every process this benchmark started: their CPU is ours, not a foreign load.
        started = (self.redis_server.process, moto.process, worker.process, self.dispatcher)
        self.pids = [p.pid for p in started if p is not None]

    def _start_dispatcher(self, log_path: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*LABELER, "dispatch"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

        def stop() -> None:
            process.terminate()
            process.wait(30)

        stack.callback(stop)
        wait_until(lambda: b"dispatching events" in log_path.read_bytes(), 60, "dispatcher up")
        return process

    def upload(self, key: str, n: int) -> float:
        """Put one image, push its event; return when the upload returned (epoch seconds)."""
        etag = self.incoming.put(key, self.images[n % len(self.images)].data).etag
        uploaded = time.time()
        self.redis.rpush(EVENTS, minio_event(self.bucket, f"labeler/incoming/{key}", etag))
        return uploaded

    def records(self, keys: list[str], timeout: float) -> dict[str, LabelRecord]:
        prefix = keys[0].split("/", 1)[0] + "/"
        wanted = {label_key(k) for k in keys}
        wait_until(
            lambda: wanted <= {i.key for i in self.labels.list(prefix)}, timeout, "labels", 0.2
        )
        with ThreadPoolExecutor(8) as pool:
            found = pool.map(
                lambda k: LabelRecord.model_validate_json(self.labels.get(k).data), wanted
            )
            return {r.source_key: r for r in found}


def latencies(uploaded: dict[str, float], records: dict[str, LabelRecord]) -> dict[str, float]:
    values = [records[k].created_at - t for k, t in uploaded.items()]
    return {
        "p50_s": round(statistics.median(values), 3),
        "p95_s": round(percentile(values, 0.95), 3),
        "max_s": round(max(values), 3),
    }


def low_load(bench: Bench) -> dict[str, Any]:
    uploaded = {}
    for n in range(LOW_LOAD_IMAGES):
        key = f"low/{n:03d}.png"
        uploaded[key] = bench.upload(key, n)
        time.sleep(LOW_LOAD_INTERVAL)  # pacing the load, not waiting for a condition
    records = bench.records(list(uploaded), 60)
    return {
        "images": LOW_LOAD_IMAGES,
        "interval_s": LOW_LOAD_INTERVAL,
        **latencies(uploaded, records),
        # One image per task: a single (padded) model call.
        "model_call_s_p50": round(statistics.median(r.timings.infer for r in records.values()), 4),
    }


def burst(bench: Bench) -> dict[str, Any]:
    keys = [f"burst/{n:04d}.png" for n in range(BURST_IMAGES)]
    cpu_before, started = cpu_seconds(bench.dispatcher.pid), time.time()
    with ThreadPoolExecutor(8) as pool:
        uploaded = dict(zip(keys, pool.map(bench.upload, keys, range(len(keys))), strict=True))
    records = bench.records(keys, 600)
    dispatcher_cpu = cpu_seconds(bench.dispatcher.pid) - cpu_before
    done = max(r.created_at for r in records.values())
    per_batch: dict[str | None, list[LabelRecord]] = defaultdict(list)
    for record in records.values():
        per_batch[record.batch_id].append(record)
    # timings.infer is each model call shared out per image: a batch's sum is its inference time.
    batch_infer = [sum(r.timings.infer for r in b) for b in per_batch.values()]
    return {
        "images": BURST_IMAGES,
        "upload_threads": 8,
        **latencies(uploaded, records),
        "seconds_to_all_labeled": round(done - started, 2),
        "images_per_s": round(BURST_IMAGES / (done - started), 1),
        "batches": len(per_batch),
        "full_batches": sum(len(b) == BATCH_MAX_IMAGES for b in per_batch.values()),
        "keys_per_batch_p50": statistics.median(len(b) for b in per_batch.values()),
        "batch_infer_s_p50": round(statistics.median(batch_infer), 3),
        "batch_infer_s_max": round(max(batch_infer), 3),
        # The whole process over the burst: parsing, dedup, Celery publishing, backlog sampling.
        "dispatcher_cpu_s": round(dispatcher_cpu, 2),
        "dispatcher_cpu_ms_per_event": round(1000 * dispatcher_cpu / BURST_IMAGES, 3),
    }


def engine_throughput(bench: Bench) -> dict[str, Any]:
    """The engine in this process, no-op enqueue, real Redis: new keys, then the same again."""
    config = replace(
        dispatch_config(bench.settings),
        events_list="bench:engine",
        batch_max_wait=0.05,
        scan_interval=0,
        backlog_high_water=10**9,  # measure the engine, not its backpressure
        backlog_low_water=0,
    )
    client = redis.Redis.from_url(bench.redis_server.url)
    s3 = make_s3_client(bench.settings.s3_options())
    store = S3Store(s3, bench.bucket, "labeler/incoming")  # never called: events carry ETags
    items = [
        minio_event(bench.bucket, f"labeler/incoming/engine/{n:06d}.png", f"{n:032x}")
        for n in range(ENGINE_EVENTS)
    ]
    results = {}
    for run in ("new", "duplicate"):
        sent: list[int] = []

        def enqueue(keys: list[str], sent: list[int] = sent) -> None:
            sent.append(len(keys))

        engine = Dispatcher(
            client,
            store,
            enqueue,
            lambda: 0,
            Metrics(CollectorRegistry()),
            config,
            labels=bench.labels,
        )
        client.rpush(config.events_list, *items)
        thread = threading.Thread(target=engine.run)
        cpu, wall = time.process_time(), time.perf_counter()
        thread.start()
        wait_until(
            lambda: (
                client.llen(config.events_list) == 0 and client.llen(config.processing_list) == 0
            ),
            300,
            "engine drained",
            0.01,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        engine.stop()
        thread.join(30)
        results[run] = {
            "events_per_s": round(ENGINE_EVENTS / wall),
            "cpu_us_per_event": round(1e6 * cpu / ENGINE_EVENTS, 1),
            "keys_sent": sum(sent),
        }
    return {"events": ENGINE_EVENTS, "take_max": config.take_max, **results}


def main() -> None:
    header = run_header()
    started = time.perf_counter()
    low: dict[str, Any] = {}
    heavy: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-") as tmp, ExitStack() as stack:
        bench = Bench(Path(tmp), stack)
        for n in range(3):  # warm the worker and the dispatcher's connections
            bench.upload(f"warm/{n}.png", n)
        bench.records([f"warm/{n}.png" for n in range(3)], 120)
        for record, measure in ((low, low_load), (heavy, burst), (engine, engine_throughput)):
            with phase(record, *bench.pids):
                record.update(measure(bench))
    bound = BATCH_MAX_WAIT_MS / 1000 + heavy["batch_infer_s_max"] + 1.0
    result = {
        **header,
        "trusted": trusted(low, heavy, engine),
        "benchmark": "dispatch (issue 4)",
        "setup": {
            "store": "moto S3 server; MinIO access-format events pushed to Redis after each PUT",
            "model": "digits small CNN, 32x32 input, 10 classes",
            "batch_max_images": BATCH_MAX_IMAGES,
            "batch_max_wait_ms": BATCH_MAX_WAIT_MS,
            "inference_batch_size": INFERENCE_BATCH,
            "worker": "1 process (prefork, concurrency 1)",
            "cpus": os.cpu_count(),
        },
        "low_load": low,
        "burst": heavy,
        "engine_in_process": engine,
        "target": {
            "p50_low_load_under_s": round(bound, 3),
            "definition": "batch_max_wait_ms + slowest batch's inference in the burst + 1 s",
            "met": low["p50_s"] < bound,
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    print(f"results: {write_result('dispatch', result)}")


if __name__ == "__main__":
    main()
