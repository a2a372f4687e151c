"""The measurements themselves: the bare model, stage costs in-process, and timed task runs."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.deployment import CLASS_NAMES, MODEL_NAME, Deployment
from bench.images import ImageSet
from bench.procstat import CpuWindow
from storage import LocalStore
from storage.registry import ModelMetadata, ModelRegistry
from storage.results import LabelStore
from tasks.contracts import CLASSIFY_BATCH, INFERENCE_QUEUE, ClassifyBatchRequest
from workers.inference import LoadedModel, ModelRuntime, configure_pillow, decode_image, make_record

INPUT_SIZE = (224, 224)
MAX_PIXELS = 50_000_000
BATCH_SIZE = 32
RESULT_TIMEOUT = 600.0  # seconds for any one task result: the run stops by itself


def load_bare_model(model_path: Path, root: Path) -> LoadedModel:
    """Load the model the way a worker does: registry over a LocalStore, then the runtime."""
    registry = ModelRegistry(LocalStore(root), MODEL_NAME)
    metadata = registry.register(
        model_path.read_bytes(),
        ModelMetadata(
            name=MODEL_NAME,
            version=1,
            class_names=CLASS_NAMES,
            input_size=INPUT_SIZE,
            source="bench",
        ),
    )
    registry.promote(metadata.version)
    return ModelRuntime(registry, batch_size=BATCH_SIZE).current()


def decoded_batches(images: ImageSet, count: int = 2) -> list[npt.NDArray[np.uint8]]:
    """``count`` pre-decoded uint8 batches of 32 from ``images``."""
    configure_pillow(MAX_PIXELS)
    blobs = [images.blobs[i % len(images.blobs)] for i in range(BATCH_SIZE * count)]
    pixels = np.stack([decode_image(b, INPUT_SIZE, max_pixels=MAX_PIXELS) for b in blobs])
    return [pixels[i : i + BATCH_SIZE] for i in range(0, len(pixels), BATCH_SIZE)]


def measure_bare(
    model: LoadedModel, batches: list[npt.NDArray[np.uint8]], calls: int
) -> dict[str, Any]:
    """Images/s of ``LoadedModel.predict`` alone, after a warm-up: the ceiling."""
    for batch in batches * 2:
        model.predict(batch)
    window = CpuWindow({"bench": [os.getpid()]}).start()
    cpu, started = time.process_time(), time.perf_counter()
    for n in range(calls):
        model.predict(batches[n % len(batches)])
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    machine = window.stop()
    images = calls * BATCH_SIZE
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2),
        "cpu_ms_per_image": round(1000 * cpu / images, 2),
        "cores_used": round(cpu / seconds, 2),
        "foreign_cores": machine["foreign_cores"],
        "settings": {"batch_size": BATCH_SIZE, "input": "pre-decoded uint8 (32, 224, 224, 3)"},
    }


def measure_stage_costs(images: ImageSet, root: Path, samples: int = 32) -> dict[str, float]:
    """CPU per image of each non-inference stage, single-threaded and uncontended.

    The same calls the worker makes: ``LocalStore.get`` (read + MD5 for the ETag), a label
    lookup that misses, ``decode_image`` (with JPEG draft), building and writing the record.
    """
    configure_pillow(MAX_PIXELS)
    store = LocalStore(root / images.name / "incoming")
    labels = LabelStore(LocalStore(root / images.name / "labels"))
    blobs = [images.blobs[i % len(images.blobs)] for i in range(samples)]
    for n, data in enumerate(blobs):
        store.put(f"{n}.jpg", data)
    metadata = ModelMetadata(
        name=MODEL_NAME, version=1, class_names=CLASS_NAMES, input_size=INPUT_SIZE
    )
    probabilities = np.full(len(CLASS_NAMES), 0.1, np.float32)
    costs: dict[str, list[float]] = {"lookup": [], "fetch": [], "decode": [], "write": []}
    write_wall: list[float] = []
    for n in range(samples):
        key = f"{n}.jpg"
        with _thread_cpu(costs["lookup"]):
            labels.read(key)
        with _thread_cpu(costs["fetch"]):
            blob = store.get(key)
        with _thread_cpu(costs["decode"]):
            decode_image(blob.data, INPUT_SIZE, max_pixels=MAX_PIXELS)
        wall = time.perf_counter()
        with _thread_cpu(costs["write"]):
            labels.write(make_record(key, blob.info.etag, metadata, probabilities))
        write_wall.append(time.perf_counter() - wall)
    out = {f"{stage}_cpu_ms": _ms(statistics.mean(v)) for stage, v in costs.items()}
    out["write_wall_ms"] = _ms(statistics.mean(write_wall))  # includes the fsync
    return out


@dataclass(frozen=True)
class Run:
    """One timed run: ``keys`` sent in tasks of ``per_task`` to a warm worker."""

    name: str
    keys: list[str]
    per_task: int


def send_batches(deployment: Deployment, run: Run) -> list[Any]:
    """Queue ``run.keys`` as ``classify_batch`` tasks; return their AsyncResults."""
    results = []
    for n, start in enumerate(range(0, len(run.keys), run.per_task)):
        request = ClassifyBatchRequest(
            batch_id=f"{run.name}-{n}", keys=run.keys[start : start + run.per_task]
        )
        results.append(
            deployment.app.send_task(
                CLASSIFY_BATCH, kwargs={"payload": request.model_dump()}, queue=INFERENCE_QUEUE
            )
        )
    return results


def timed_run(deployment: Deployment, run: Run, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Images/s from the first send to the last result, and the CPU each process used."""
    window = CpuWindow(pids).start()
    started = time.perf_counter()
    outcomes = [result.get(timeout=RESULT_TIMEOUT) for result in send_batches(deployment, run)]
    seconds = time.perf_counter() - started
    cpu = window.stop()
    totals = {k: sum(int(o[k]) for o in outcomes) for k in ("labeled", "errored", "skipped")}
    if totals["labeled"] != len(run.keys):
        raise RuntimeError(f"run {run.name}: expected {len(run.keys)} labels, got {totals}")
    images = len(run.keys)
    return {
        "images": images,
        "tasks": len(outcomes),
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2),
        "outcomes": totals,
        "cpu": cpu,
    }


def warm_up(deployment: Deployment, run: Run) -> float:
    """Send one batch and wait for it (the first one loads and traces the model)."""
    started = time.perf_counter()
    for result in send_batches(deployment, run):
        result.get(timeout=RESULT_TIMEOUT)
    return round(time.perf_counter() - started, 2)


def file_create_cpu_us(folder: Path, count: int = 200) -> float:
    """CPU microseconds this thread spends creating one empty file in ``folder`` (made here).

    Every record is a new file, so this is part of a local store's cost per image, and it is
    the file system's, not the labeler's: about 20 us on a fresh ext4 here, but up to 700 us
    for some minutes after many deletions on one without a journal, where choosing a new inode
    skips over recently deleted ones (the kernel's ``recently_deleted``). The files stay: deleting
    them would make the creates after them dearer.
    """
    folder.mkdir(parents=True)
    started = time.thread_time()
    for n in range(count):
        os.close(os.open(folder / f"{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return round(1e6 * (time.thread_time() - started) / count, 1)


def record_timings(labels: LabelStore, keys: list[str], sample: int = 200) -> dict[str, float]:
    """Mean per-image stage times (wall, ms) from the records' ``timings`` field.

    ``infer`` is the model call's time shared out over its batch; ``fetch`` (label lookup +
    GET) and ``decode`` are measured inside the worker's threads, so CPU contention shows up in
    them, and ``decode`` also includes the wait for a free decode slot.
    """
    step = max(1, len(keys) // sample)
    records = [r for r in (labels.read(k) for k in keys[::step]) if r is not None]
    if not records:
        return {}
    out = {"records": float(len(records))}
    for stage in ("fetch", "decode", "infer"):
        values = sorted(getattr(r.timings, stage) for r in records)
        out[f"{stage}_mean_ms"] = _ms(statistics.mean(values))
        out[f"{stage}_p95_ms"] = _ms(values[int(0.95 * (len(values) - 1))])
    return out


@contextmanager
def _thread_cpu(out: list[float]) -> Iterator[None]:
    """Append the CPU seconds the calling thread spends inside the block to ``out``."""
    started = time.thread_time()
    yield
    out.append(time.thread_time() - started)


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)
