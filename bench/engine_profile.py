"""Where a task's time goes: the worker's ``BatchClassifier`` run in this process, timed inside.

The model is wrapped so every ``predict`` call is timed; a task's wall time then splits into
waiting for the first model batch (fetch + decode of 32 images, the model idle), model calls,
gaps between model calls (the main thread waiting for decodes), and the tail after the last
call (waiting for record writes). No Celery, no Redis, no second process: comparing this with
the end-to-end runs separates the engine's own losses from the task system's.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from bench.images import ImageSet, keys_for, place_local
from bench.procstat import CpuWindow
from labeler.settings import Settings
from labeler.wiring import inference_limits
from monitoring.metrics import Metrics
from storage import LocalStore
from storage.results import LabelStore
from workers.inference import BatchClassifier, LoadedModel, configure_pillow

MAX_PIXELS = 50_000_000


@dataclass
class _TimedModel:
    """A ``LoadedModel`` stand-in that records when each ``predict`` call ran."""

    model: LoadedModel
    calls: list[tuple[float, float]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        out = self.model.predict(images)
        self.calls.append((started, time.perf_counter()))
        return out


@dataclass
class _FixedRuntime:
    """What ``BatchClassifier`` needs of a ``ModelRuntime``: always the same model."""

    model: _TimedModel

    def current(self) -> _TimedModel:
        return self.model

    def version(self, version: int) -> _TimedModel:
        return self.model


def profile_engine(
    model: LoadedModel,
    images: ImageSet,
    count: int,
    per_task: int,
    root: Path,
    *,
    decode_threads: int = 2,
) -> dict[str, Any]:
    """Classify ``count`` keys in tasks of ``per_task`` in-process; split each task's time."""
    configure_pillow(MAX_PIXELS)
    name = f"{images.name}-b{per_task}-d{decode_threads}"
    store_root = root / name
    keys = keys_for("run", count)
    place_local(images, store_root / "incoming", keys)
    timed = _TimedModel(model)
    limits = replace(
        inference_limits(Settings()), decode_threads=decode_threads, max_image_pixels=MAX_PIXELS
    )
    engine = BatchClassifier(
        LocalStore(store_root / "incoming"),
        LabelStore(LocalStore(store_root / "labels")),
        _FixedRuntime(timed),  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        limits,
    )
    parts = {"first_batch_wait": 0.0, "model_calls": 0.0, "gaps_between_calls": 0.0, "tail": 0.0}
    window = CpuWindow({"bench": [os.getpid()]}).start()
    started = time.perf_counter()
    tasks = 0
    try:
        for n in range(0, count, per_task):
            timed.calls.clear()
            task_started = time.perf_counter()
            engine.classify(keys[n : n + per_task], batch_id=f"profile-{n}")
            _split(parts, task_started, time.perf_counter(), timed.calls)
            tasks += 1
    finally:
        engine.close()
    seconds = time.perf_counter() - started
    cpu = window.stop()
    return {
        "name": name,
        "image_set": images.name,
        "images": count,
        "batch_max_images": per_task,
        "decode_threads": decode_threads,
        "seconds": round(seconds, 3),
        "images_per_second": round(count / seconds, 2),
        "tasks": tasks,
        "cpu": cpu,
        "share_of_wall": {k: round(v / seconds, 3) for k, v in parts.items()},
        "ms_per_task": {k: round(1000 * v / tasks, 1) for k, v in parts.items()},
    }


def _split(
    parts: dict[str, float], start: float, end: float, calls: list[tuple[float, float]]
) -> None:
    """Add one task's wait / model / gap / tail seconds to ``parts``."""
    if not calls:
        parts["tail"] += end - start
        return
    parts["first_batch_wait"] += calls[0][0] - start
    parts["model_calls"] += sum(b - a for a, b in calls)
    parts["gaps_between_calls"] += sum(nxt[0] - prev[1] for prev, nxt in itertools.pairwise(calls))
    parts["tail"] += end - calls[-1][1]
