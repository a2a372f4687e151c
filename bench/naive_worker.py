"""The naive baseline: one Celery task per image, full decode, ``model.predict`` on one image.

What a first version of the service would look like, to measure the batch engine against. Its
own tiny Celery app (JSON only, Celery's defaults otherwise), started as
``celery -A bench.naive_worker worker --pool prefork --concurrency 1 --queues naive``. The
broker, model file and store directories come from ``BENCH_NAIVE_*`` environment variables set
by ``bench.inference``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery
from celery.signals import worker_process_init
from PIL import Image

QUEUE = "naive"
TASK = "bench.naive.classify_one"
BROKER_ENV = "BENCH_NAIVE_BROKER_URL"
MODEL_ENV = "BENCH_NAIVE_MODEL"
INCOMING_ENV = "BENCH_NAIVE_INCOMING"
LABELS_ENV = "BENCH_NAIVE_LABELS"
CLASSES = [f"c{i}" for i in range(10)]


class _Process:
    """What one worker process holds: the model, loaded after fork."""

    model: Any = None


_process = _Process()


def make_app(broker_url: str) -> Celery:
    """The naive app: JSON serialization, results in the same Redis, one task."""
    app = Celery("naive", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK)(classify_one)
    return app


def classify_one(key: str) -> dict[str, Any]:
    """Read, fully decode, resize and predict one image; write its label as JSON."""
    data = (Path(os.environ[INCOMING_ENV]) / key).read_bytes()
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
    pixels = np.asarray(image, dtype=np.float32)
    probabilities = _process.model.predict(pixels[None], verbose=0)[0]
    best = int(np.argmax(probabilities))
    record = {"source_key": key, "label": CLASSES[best], "score": float(probabilities[best])}
    target = Path(os.environ[LABELS_ENV]) / f"{key}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record))
    return record


@worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _load_model(**_: Any) -> None:
    # TensorFlow is not fork-safe: load in the child, once per process.
    import keras

    _process.model = keras.saving.load_model(os.environ[MODEL_ENV], compile=False)


app = make_app(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"))
