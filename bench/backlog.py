"""A 10,000-image backlog drained by one real worker: is throughput steady, is memory bounded?

Issue 8's load check. One ``labeler worker --queues inference`` (prefork, concurrency 1) over a
``file://`` store and a private Redis serves MobileNetV2 (224x224, random weights, 10 classes);
10,000 640x480 JPEGs (100 distinct photos from scikit-learn's samples, hard-linked under 10,000
keys: each key is still opened, hashed and decoded on its own) are queued at once with
``labeler submit``. Every 2 s the benchmark counts the label records written, sums the RSS of
the worker's process tree and reads the queue's depth. It writes
``bench/results/backlog.json`` with the series, images/s per quarter of the backlog, RSS growth,
and the CPU other jobs used meanwhile (a busy machine makes rates untrustworthy, not memory).
Figures are recorded, never asserted.

    .venv/bin/python -m bench.backlog [--images 10000] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import redis

from bench.deployment import Deployment, Services, local_deployment, save_mobilenet
from bench.header import run_header, trusted
from bench.images import keys_for, make_image_set, place_local
from bench.measure import Run, warm_up
from bench.procstat import CpuWindow, busy_cores, process_tree, rss_bytes
from testbed.processes import run_labeler

RESULTS = Path(__file__).parent / "results" / "backlog.json"
SAMPLE_SECONDS = 2.0
DISTINCT_IMAGES = 100
WARM_UP_IMAGES = 64
DRAIN_TIMEOUT = 1800.0  # seconds: stop waiting (and say so) rather than hang
STEADY_TOLERANCE = 0.15  # last quarter within 15% of the first: steady
RSS_GROWTH_BOUND_PERCENT = 10.0  # the same bound bench.inference applies to worker memory
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class Sample:
    seconds: float  # since `labeler submit` started
    labels: int  # records written so far
    rss_bytes: int  # the worker's whole process tree
    queued_tasks: int  # messages waiting in the inference queue


class Sampler(threading.Thread):
    """Counts records, sums RSS and reads the queue depth every ``SAMPLE_SECONDS``."""

    def __init__(self, labels_dir: Path, worker_pid: int, broker: redis.Redis) -> None:
        super().__init__(name="backlog-sampler", daemon=True)
        self.labels_dir = labels_dir
        self.worker_pid = worker_pid
        self.broker = broker
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self._halt = threading.Event()

    def take(self) -> Sample:
        labels = len(os.listdir(self.labels_dir)) if self.labels_dir.exists() else 0
        sample = Sample(
            round(time.perf_counter() - self.started, 2),
            labels,
            rss_bytes(process_tree(self.worker_pid)),
            int(self.broker.llen("inference")),
        )
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_SECONDS):
            self.take()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def drain(deployment: Deployment, services: Services, prefix: str, total: int) -> dict[str, Any]:
    """Queue ``total`` keys under ``prefix`` at once; sample until every record is written."""
    assert deployment.local_root is not None
    assert deployment.worker is not None
    pids = deployment.worker_pids()
    labels_dir = deployment.local_root / "labels" / prefix.rstrip("/")
    broker = redis.Redis.from_url(services.redis_url(0))
    cpu = CpuWindow({"worker": pids, "redis": services.redis_pid(), "bench": [os.getpid()]})
    sampler = Sampler(labels_dir, pids[0], broker)
    cpu.start()
    first = sampler.take()  # t=0: nothing queued yet, the warm worker's RSS
    sampler.start()
    submitted = run_labeler(deployment.env, "submit", prefix)
    queued_at = round(time.perf_counter() - sampler.started, 2)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while sampler.samples[-1].labels < total and time.monotonic() < deadline:
        time.sleep(0.2)
    sampler.stop()
    last = sampler.take()
    return {
        "submit_output": submitted.stdout.strip(),
        "queued_after_seconds": queued_at,
        "drained": last.labels >= total,
        "cpu": cpu.stop(),
        "start": first,
        "samples": sampler.samples,
        "worker_pids": process_tree(pids[0]),
    }


def analyse(run: dict[str, Any], total: int) -> dict[str, Any]:
    """Images/s over time and per quarter of the backlog; RSS start, peak, end and growth."""
    samples: list[Sample] = run["samples"]
    done = [s for s in samples if s.labels >= total]
    finished = done[0].seconds if done else samples[-1].seconds
    quarters = [_crossing(samples, total * q // 4) for q in range(5)]
    first_label = next((s.seconds for s in samples if s.labels > 0), None)
    quarters[0] = run["queued_after_seconds"]  # from the moment the whole backlog is queued
    rates = [round((total // 4) / (b - a), 2) if b > a else None for a, b in pairwise(quarters)]
    series = [
        {
            "t": s.seconds,
            "labels": s.labels,
            "images_per_second": round((s.labels - p.labels) / (s.seconds - p.seconds), 1),
            "rss_mib": _mib(s.rss_bytes),
            "queued_tasks": s.queued_tasks,
        }
        for p, s in pairwise(samples)
        if s.seconds > p.seconds
    ]
    draining = [r["images_per_second"] for r in series if 0 < r["labels"] < total]
    rss_start = run["start"].rss_bytes
    rss_end = samples[-1].rss_bytes
    rss_at_quarter = _rss_at(samples, quarters[1])
    steady = None
    if rates[0] and rates[-1]:
        steady = abs(rates[-1] / rates[0] - 1) <= STEADY_TOLERANCE
    growth = round(100 * (rss_end - rss_start) / rss_start, 2)
    return {
        "images": total,
        "records_written": samples[-1].labels,
        "total_seconds": finished,
        "seconds_to_first_label": first_label,
        "images_per_second_overall": round(total / finished, 2) if finished else None,
        "images_per_second_by_quarter": rates,
        "quarter_boundaries_seconds": quarters,
        "last_to_first_quarter_ratio": round(rates[-1] / rates[0], 3)
        if rates[0] and rates[-1]
        else None,
        "throughput_steady": steady,
        "steady_means": f"last quarter's images/s within {STEADY_TOLERANCE:.0%} of the first's",
        "images_per_second_2s_windows": {
            "mean": round(statistics.mean(draining), 1) if draining else None,
            "stdev": round(statistics.stdev(draining), 1) if len(draining) > 1 else None,
            "min": min(draining, default=None),
            "max": max(draining, default=None),
            "note": "records land a model batch (32 images) at a time, so 2 s windows are "
            "lumpy; the quarters are the steadiness measure",
        },
        "rss_start_mib": _mib(rss_start),
        "rss_after_first_quarter_mib": _mib(rss_at_quarter),
        "rss_end_mib": _mib(rss_end),
        "rss_peak_mib": _mib(max(s.rss_bytes for s in samples)),
        "rss_growth_percent": growth,
        "rss_growth_after_first_quarter_percent": round(
            100 * (rss_end - rss_at_quarter) / rss_at_quarter, 2
        ),
        "memory_bounded": growth < RSS_GROWTH_BOUND_PERCENT,
        "memory_bounded_means": f"RSS growth start->end < {RSS_GROWTH_BOUND_PERCENT}%",
        "series": series,
    }


def run_backlog(root: Path, total: int) -> dict[str, Any]:
    quiet = busy_cores()
    print(f"preparing the model and {total} keys (machine busy: {quiet} cores)...", flush=True)
    model_path = save_mobilenet(root / "mobilenet_v2.keras")
    images = make_image_set((640, 480), DISTINCT_IMAGES)
    with ExitStack() as stack:
        services = Services(root, stack)
        deployment = local_deployment(services, 0, model_path)
        assert deployment.local_root is not None
        warm = Run("warm", keys_for("warm", WARM_UP_IMAGES), 64)
        keys = keys_for("backlog", total)
        place_local(images, deployment.local_root / "incoming", warm.keys + keys)
        services.start_worker(deployment, "worker-backlog")
        print("warming up the worker...", flush=True)
        warm_seconds = warm_up(deployment, warm)
        print(f"draining {total} images...", flush=True)
        run = drain(deployment, services, "backlog/", total)
        errors = _errors(deployment, keys)
    result = analyse(run, total)
    return {
        "machine_busy_cores_before_start": quiet,
        "submit_output": run["submit_output"],
        "queued_after_seconds": run["queued_after_seconds"],
        "drained": run["drained"],
        "records_with_errors_in_sample": errors,
        "warm_up_seconds": warm_seconds,
        "cpu": run["cpu"],
        "worker_processes": len(run["worker_pids"]),
        **result,
        "setup": {
            "model": "mobilenet_v2 224x224, random weights, 10 classes "
            "(workers.training.architectures.make_backbone_classifier)",
            "images": f"{total} x 640x480 JPEG ({DISTINCT_IMAGES} distinct, "
            f"mean {images.mean_bytes} bytes), hard-linked under distinct keys",
            "store": "file:// (LocalStore)",
            "worker": "labeler worker --queues inference (prefork, concurrency 1)",
            "queued_with": "labeler submit backlog/ (all tasks at once)",
            "batch_max_images": deployment.settings.batch_max_images,
            "inference_batch_size": deployment.settings.inference_batch_size,
            "decode_threads": deployment.settings.decode_threads,
            "sample_every_seconds": SAMPLE_SECONDS,
        },
    }


def _crossing(samples: list[Sample], count: int) -> float:
    """When the record count reached ``count``, interpolated between samples."""
    previous = samples[0]
    for sample in samples:
        if sample.labels >= count:
            if sample.labels == previous.labels:
                return sample.seconds
            share = (count - previous.labels) / (sample.labels - previous.labels)
            return round(previous.seconds + share * (sample.seconds - previous.seconds), 2)
        previous = sample
    return samples[-1].seconds


def _rss_at(samples: list[Sample], seconds: float) -> int:
    return next((s.rss_bytes for s in samples if s.seconds >= seconds), samples[-1].rss_bytes)


def _errors(deployment: Deployment, keys: list[str], sample: int = 500) -> int:
    """Records in a sample of ``keys`` that are missing or carry an error."""
    records = [deployment.labels.read(k) for k in keys[:: max(1, len(keys) // sample)]]
    return sum(r is None or r.error is not None for r in records)


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def _summary(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['images']} images in {r['total_seconds']} s: "
            f"{r['images_per_second_overall']} images/s overall",
            f"by quarter: {r['images_per_second_by_quarter']} images/s "
            f"(last/first {r['last_to_first_quarter_ratio']}, steady: {r['throughput_steady']})",
            f"worker RSS: {r['rss_start_mib']} -> peak {r['rss_peak_mib']} -> end "
            f"{r['rss_end_mib']} MiB ({r['rss_growth_percent']:+}%, bounded: "
            f"{r['memory_bounded']})",
            f"other jobs on the machine: {r['cpu']['foreign_cores']} cores on average",
        ]
    )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # run the finally blocks: stop what we started
    header = run_header()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-backlog-") as tmp:
        measured = run_backlog(Path(tmp), args.images)
    results = {
        **header,
        "benchmark": "backlog drain (issue 8)",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmark_seconds": round(time.perf_counter() - started, 1),
        **measured,
    }
    # One phase (the drain) is compared with itself by quarter: its foreign load is the one
    # that decides whether the figures can be trusted.
    results["trusted"] = trusted(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(_summary(results))
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
