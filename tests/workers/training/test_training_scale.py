"""Training that does not grow with the data set, runs on several devices in sync, and still
learns digits: each in its own Python process with real TensorFlow."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.sample_data import digit_samples
from storage import LocalStore
from testbed.digits import digits_retrainer

pytestmark = pytest.mark.slow

IMAGES = 5000
SIDE = 224
STACKED_BYTES = IMAGES * SIDE * SIDE * 3  # what holding the set in RAM would take: 750 MB

_MEMORY_CHILD = """
import json, sys
from pathlib import Path
import keras
import numpy as np
from keras import layers
from storage import LocalStore
from workers.training import load_training_data
from workers.training import predict_split
from workers.training import ImageCache
from dataclasses import replace
from labeler.settings import Settings
from labeler.wiring import training_config
from workers.training import train_model

def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

root = Path(sys.argv[1])
inputs = keras.Input((224, 224, 3))
x = layers.GlobalAveragePooling2D()(layers.Rescaling(1 / 255)(inputs))
base = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
base.predict(np.zeros((2, 224, 224, 3)), verbose=0)  # TensorFlow fully started: the baseline
ready = peak_rss()
data = load_training_data(LocalStore(root / "training"),
                          ImageCache(root / "cache", (224, 224), max_bytes=2**31),
                          max_pixels=10**7)
config = replace(training_config(Settings()), fine_tune_epochs=1, fine_tune_learning_rate=0.1,
                 batch_size=32, augmentation="none", shuffle_buffer=256)
trained = train_model(data, config, base_model=base, base_classes=["dark", "light"])
probabilities = predict_split(trained.model, data.test)
print(json.dumps({"ready": ready, "peak": peak_rss(), "cache": data.cache,
                  "train": len(data.train), "tested": len(probabilities),
                  "accuracy": trained.history["val_accuracy"][-1]}))
"""


def _small_png(level: int, seed: int) -> bytes:
    """64x64, upscaled to 224x224 by the decoder: cheap to make, full size in the cache."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.integers(-40, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _run(script: str, *args: str, timeout: float = 600) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_training_memory_stays_flat_on_a_set_bigger_than_its_budget(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    for n in range(IMAGES):
        name, level = ("dark", 70) if n % 2 else ("light", 185)
        store.put(f"{name}/{n:05d}.png", _small_png(level, n))

    result = _run(_MEMORY_CHILD, str(tmp_path))

    growth = int(result["peak"]) - int(result["ready"])  # type: ignore[call-overload]
    assert result["cache"] == {"total": IMAGES, "fetched": IMAGES, "reused": 0, "failed": 0}
    assert int(result["train"]) + int(result["tested"]) > 0.85 * IMAGES  # type: ignore[call-overload]
    # Stacking the set would add at least STACKED_BYTES; streaming adds buffers only.
    assert growth < STACKED_BYTES // 2, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert float(result["accuracy"]) > 0.9  # type: ignore[arg-type]


_REPLICAS_CHILD = """
import json, math, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from storage import LocalStore
from workers.training import load_training_data
from workers.training import ImageCache
from dataclasses import replace
from labeler.settings import Settings
from labeler.wiring import training_config
from workers.training import train_model

root = Path(sys.argv[1])
data = load_training_data(LocalStore(root / "training"),
                          ImageCache(root / "cache", (32, 32), max_bytes=2**30), max_pixels=10**6)
config = replace(training_config(Settings()), input_size=(32, 32), max_epochs=6, batch_size=16,
                 patience=10)
trained = train_model(data, config)
print(json.dumps({"replicas": trained.replicas, "train": len(data.train),
                  "steps": int(trained.model.optimizer.iterations.numpy()),
                  "epochs": len(trained.phases),
                  "val_accuracy": trained.history["val_accuracy"][-1]}))
"""


def test_two_devices_train_in_sync_with_the_global_batch_scaled(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    for sample in digit_samples()[:600]:
        store.put(sample.key, sample.data)

    result = _run(_REPLICAS_CHILD, str(tmp_path))

    assert result["replicas"] == 2
    global_batch = 16 * 2
    steps_per_epoch = -(-int(result["train"]) // global_batch)  # type: ignore[call-overload]
    assert result["steps"] == steps_per_epoch * int(result["epochs"])  # type: ignore[call-overload]
    assert float(result["val_accuracy"]) > 0.8  # type: ignore[arg-type]


# The test split holds 196 digits: one image is half a point. Over 5 seeds (bench/digits_seeds.py,
# bench/results/digits_seeds.json, on a loaded machine) test accuracy was 0.9898 to 0.9949 (mean
# 0.9939); the default seed alone gave 0.9847 and 0.9949 in two runs here and 0.9796 in a loaded
# CI run: thread scheduling changes float sums. 0.96 leaves 3 images below the worst seen.
DIGITS_FLOOR = 0.96


def test_digits_from_scratch_still_reach_096_streamed(tmp_path: Path) -> None:
    retrainer, images = digits_retrainer(tmp_path)

    outcome = retrainer.run()

    assert images == 1797  # scikit-learn's digits, every one
    assert outcome.images == {"total": images, "fetched": images, "reused": 0, "failed": 0}
    assert outcome.accuracy >= DIGITS_FLOOR
    assert outcome.promoted
