"""A tiny digits CNN, trained once per test session (seconds on a CPU), and its held-out set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labeler.sample_data import Sample, digit_samples
from storage.registry import ModelMetadata, ModelRegistry
from workers.inference import decode_image

if TYPE_CHECKING:
    from workers.training import Retrainer

INPUT_SIZE = (32, 32)
CLASSES = [str(d) for d in range(10)]


def register_digits(registry: ModelRegistry, model_path: Path) -> None:
    """What `labeler models import` does with the digits model (as v1, promoted), without
    starting TensorFlow in a subprocess."""
    metadata = ModelMetadata(
        name=registry.name, version=1, class_names=CLASSES, input_size=INPUT_SIZE, source="imported"
    )
    registry.promote(registry.register(model_path.read_bytes(), metadata).version)


def split_digits() -> tuple[list[Sample], list[Sample]]:
    """(train, held_out): every sixth digit is held out, 300 in all."""
    samples = digit_samples()
    held_out = [s for i, s in enumerate(samples) if i % 6 == 0][:300]
    held = {s.key for s in held_out}
    return [s for s in samples if s.key not in held], held_out


def train_digits_model(path: Path, train: list[Sample], *, epochs: int = 12) -> Path:
    """Fit the small CNN on ``train`` (decoded exactly as the workers decode) and save it."""
    from workers.training import make_small_cnn

    x = np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in train])
    y = np.array([int(s.label) for s in train])
    model = make_small_cnn(INPUT_SIZE, len(CLASSES), seed=7)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.1, verbose=0)
    model.save(path)
    return path


def digits_retrainer(root: Path, *, seed: int = 1337) -> tuple[Retrainer, int]:
    """A Retrainer as a training worker builds it, over every digit exported to a local
    ``training/`` under ``root``, learning a first model from nothing; and the image count.

    ``seed`` seeds the weights, shuffling and augmentation (1337 is LABELER_TRAIN_SEED's default).
    """
    from prometheus_client import CollectorRegistry

    from labeler.settings import Settings
    from labeler.wiring import retrain_config, training_config
    from monitoring.metrics import Metrics
    from storage import LocalStore
    from workers.training import Retrainer

    training = LocalStore(root / "training")
    samples = digit_samples()
    for sample in samples:
        training.put(sample.key, sample.data)
    retrainer = Retrainer(
        training,
        ModelRegistry(LocalStore(root / "models"), "digits"),
        LocalStore(root / "reports"),
        Metrics(CollectorRegistry()),
        replace(
            retrain_config(Settings()),
            training=replace(training_config(Settings()), input_size=INPUT_SIZE, seed=seed),
            cache_dir=root / "cache",
        ),
    )
    return retrainer, len(samples)
