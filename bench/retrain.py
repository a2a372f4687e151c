"""Retraining: accuracy (issue 5), and a night that costs what changed (issue 16).

- ``digits``: from nothing on the full digits set (1,797 images, split 80/10/10 by key hash).
  Bar: test accuracy >= 0.98 in under 3 minutes on a 2-core machine.
- ``data_phase``: 20,000 synthetic 224x224 JPEGs in a local-directory store. The first retrain's
  data phase (list, fetch, decode into the image cache) vs a second one after 1% of the files
  changed (bar: second < 10% of the first); the peak RSS of the training process (data phase and
  one streamed epoch) at 5,000 and at 20,000 images (bar: < 3 GiB and flat). Each run is a fresh
  process, as a training worker is after a restart.
- ``input_pipeline``: MobileNetV2 (224x224) training steps/s fed by the streamed cache pipeline
  (default augmentation, and without it) vs fed one in-memory batch over and over
  (bar: ratio >= 0.9), each the median of interleaved rounds. On a CPU-only host the pipeline
  shares the cores with the step.

Writes bench/results/retrain.json. Usage: ``python -m bench.retrain``.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.header import phase, run_header, trusted, write_result

LARGE, SMALL, CHANGED = 20_000, 5_000, 200  # CHANGED: 1% of LARGE
SIDE = 224
PIPELINE_STEPS = 8  # per round: each pipeline runs ROUNDS times, the median counts
ROUNDS = 3
CACHE_BYTES = 10 * 2**30


def main() -> None:
    result = run_header()
    result["digits"] = _digits()
    with tempfile.TemporaryDirectory(prefix="labeler-bench-retrain-") as tmp:
        root = Path(tmp)
        _make_images(root / "small", SMALL, seed=0)
        _make_images(root / "large", LARGE, seed=0)
        result["data_phase"] = _data_phase(root)
        result["input_pipeline"] = _input_pipeline(root)
    path = write_result("retrain", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


def _digits() -> dict[str, Any]:
    from testbed.digits import digits_retrainer
    from workers.inference import configure_pillow

    configure_pillow(50_000_000)
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-") as tmp:
        retrainer, record["images"] = digits_retrainer(Path(tmp))
        epochs: list[dict[str, object]] = []
        with phase(record):
            started = time.perf_counter()
            outcome = retrainer.run(progress=lambda p: epochs.append(p) if "epoch" in p else None)
            seconds = time.perf_counter() - started
    record.update(
        {
            "seconds": round(seconds, 1),
            "test_accuracy": round(outcome.accuracy, 4),
            "test_macro_f1": round(outcome.macro_f1, 4),
            "epochs_run": len(epochs),
            "promoted": outcome.promoted,
            "bar": {"accuracy >= 0.98": outcome.accuracy >= 0.98, "under 180 s": seconds < 180},
        }
    )
    return record


def _make_images(training: Path, count: int, *, seed: int, only: range | None = None) -> None:
    """``count`` synthetic photos in two classes (written as files: the store lists the tree)."""

    def one(n: int) -> None:
        rng = np.random.default_rng(seed * 1_000_003 + n)
        name, level = ("dark", 80) if n % 2 else ("light", 170)
        small = np.clip(level + rng.normal(0, 40, (14, 14, 3)), 0, 255).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(small).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        path = training / name / f"{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(out.getvalue())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, only if only is not None else range(count)))


def _data_phase(root: Path) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    runs["small_first"] = _child_run(root, "small")
    runs["large_first"] = _child_run(root, "large")
    _make_images(root / "large", LARGE, seed=1, only=range(0, LARGE, LARGE // CHANGED))
    runs["large_second"] = _child_run(root, "large")
    first, second = runs["large_first"], runs["large_second"]
    ratio = second["data_seconds"] / first["data_seconds"]
    peak = max(r["peak_rss_bytes"] for r in runs.values())
    growth = runs["large_first"]["peak_rss_bytes"] - runs["small_first"]["peak_rss_bytes"]
    return {
        "runs": runs,
        "second_over_first": round(ratio, 4),
        "peak_rss_gib": round(peak / 2**30, 3),
        "rss_growth_5k_to_20k_mib": round(growth / 2**20, 1),
        "stacked_20k_gib": round(LARGE * SIDE * SIDE * 3 / 2**30, 2),
        "bar": {"second < 10% of first": ratio < 0.1, "peak RSS < 3 GiB": peak < 3 * 2**30},
        "trusted": trusted(*runs.values()),
    }


def _child_run(root: Path, name: str) -> dict[str, Any]:
    """One retrain's data phase and one streamed epoch in a fresh process, measured."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.retrain", "child", str(root), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    record: dict[str, Any] = {}
    assert child.stdin is not None
    assert child.stdout is not None
    with phase(record, child.pid):  # ends while the child still lives, so its CPU is counted
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
    child.communicate("exit\n", timeout=60)
    if child.returncode != 0 or not line.startswith("{"):
        raise RuntimeError(f"child run {name} failed ({child.returncode}): {line!r}")
    record.update(json.loads(line))
    return record


def _child(root: Path, name: str) -> None:
    """Run in the child: wait for the parent's go (so its CPU window includes us), then work."""
    sys.stdin.readline()
    import keras
    from keras import layers

    from labeler.settings import Settings
    from labeler.wiring import training_config
    from storage import LocalStore
    from workers.training import ImageCache, load_training_data, train_model

    started = time.perf_counter()
    data = load_training_data(
        LocalStore(root / name),
        ImageCache(root / f"cache-{name}", (SIDE, SIDE), max_bytes=CACHE_BYTES),
        max_pixels=10**7,
    )
    data_seconds = time.perf_counter() - started
    # A model whose step costs little, so this measures the input side of one epoch.
    inputs = keras.Input((SIDE, SIDE, 3))
    pooled = layers.GlobalAveragePooling2D()(layers.Rescaling(1 / 255)(inputs))
    base = keras.Model(inputs, layers.Dense(2, activation="softmax")(pooled))
    started = time.perf_counter()
    config = replace(training_config(Settings()), fine_tune_epochs=1, fine_tune_learning_rate=0.1)
    trained = train_model(data, config, base_model=base, base_classes=data.class_names)
    print(
        json.dumps(
            {
                "images": data.cache["total"],
                "cache": data.cache,
                "data_seconds": round(data_seconds, 2),
                "epoch_seconds": round(time.perf_counter() - started, 2),
                "val_accuracy": round(trained.history["val_accuracy"][-1], 4),
                "peak_rss_bytes": _peak_rss(),
            }
        ),
        flush=True,
    )
    sys.stdin.readline()  # the parent reads our CPU time before we exit


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _input_pipeline(root: Path) -> dict[str, Any]:
    import tensorflow as tf

    from labeler.settings import Settings
    from labeler.wiring import training_config
    from storage import LocalStore
    from workers.training import ImageCache, load_training_data, make_backbone_classifier
    from workers.training.fitting import input_pipeline

    data = load_training_data(
        LocalStore(root / "large"),
        ImageCache(root / "cache-large", (SIDE, SIDE), max_bytes=CACHE_BYTES),
        max_pixels=10**7,
    )
    config = training_config(Settings())
    model = make_backbone_classifier((SIDE, SIDE), 2, backbone="mobilenet_v2", weights=None)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    streamed = input_pipeline(data.train, config, config.batch_size, training=True).repeat()
    plain = replace(config, augmentation="none")  # the reading alone, without augmentation
    unaugmented = input_pipeline(data.train, plain, config.batch_size, training=True).repeat()
    images, labels = next(iter(streamed))
    in_memory = tf.data.Dataset.from_tensors((images, labels)).repeat()
    record: dict[str, Any] = {
        "model": "mobilenet_v2",
        "batch": config.batch_size,
        "augmentation": config.augmentation,
        "steps_per_round": PIPELINE_STEPS,
        "rounds": ROUNDS,
    }
    runs = {"in_memory": in_memory, "streamed": streamed, "unaugmented": unaugmented}
    for dataset in runs.values():
        model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # traced and warm
    # Rounds interleave the pipelines, so a slow spell of the machine hits all of them alike.
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, dataset in runs.items():
            part: dict[str, Any] = {}
            with phase(part):
                started = time.perf_counter()
                model.fit(dataset, steps_per_epoch=PIPELINE_STEPS, epochs=1, verbose=0)
                elapsed = time.perf_counter() - started
            part["steps_per_second"] = round(PIPELINE_STEPS / elapsed, 4)
            samples[name].append(part)
    for name, parts in samples.items():
        rates = [part["steps_per_second"] for part in parts]
        record[name] = {"steps_per_second": statistics.median(rates), "rounds": parts}
    reference = record["in_memory"]["steps_per_second"]
    ratio = record["streamed"]["steps_per_second"] / reference
    record["ratio"] = round(ratio, 3)
    record["ratio_unaugmented"] = round(record["unaugmented"]["steps_per_second"] / reference, 3)
    record["bar"] = {"ratio >= 0.9": ratio >= 0.9}
    record["trusted"] = trusted(*(part for parts in samples.values() for part in parts))
    return record


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        _child(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
