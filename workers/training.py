"""Fitting a classifier: from nothing, or warm-started from the production model.

Reads like keras.io: a pure builder, augmentation in the tf.data pipeline (training only),
class weights for imbalance, early stopping on validation, and two-phase fine-tuning where a
backbone is frozen first (train the head; then unfreeze with BatchNorm frozen at a low rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.dataset import Split, TrainingData

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingConfig:
    input_size: tuple[int, int] = (224, 224)  # a first model only; warm starts keep theirs
    architecture: str = "auto"  # auto | small_cnn | mobilenet_v2 | efficientnet_b0
    weights: str | None = None  # None (offline), "imagenet", or a local weights file
    max_epochs: int = 30
    fine_tune_epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 4
    seed: int = 1337

    def resolved_architecture(self) -> str:
        if self.architecture != "auto":
            return self.architecture
        return "small_cnn" if max(self.input_size) <= 64 else "mobilenet_v2"


@dataclass
class TrainedModel:
    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)  # the phase of each epoch in ``history``


def train_model(
    data: TrainingData,
    config: TrainingConfig,
    *,
    base_model: Any | None = None,
    base_classes: list[str] | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    """Fit on ``data.train`` with early stopping on ``data.validation``."""
    import keras

    keras.utils.set_random_seed(config.seed)
    report = progress or (lambda _: None)
    model, backbone = _initial_model(data, config, base_model, base_classes)
    trained = TrainedModel(model)
    num_classes = len(data.class_names)
    if backbone is not None:  # phase 1: only the new head learns
        backbone.trainable = False
        _fit(trained, data, config, "head", config.learning_rate, config.max_epochs, report)
        _unfreeze(backbone)
        _fit(trained, data, config, "fine-tune", config.fine_tune_learning_rate,
             config.fine_tune_epochs, report)  # fmt: skip
    else:
        warm = base_model is not None
        rate = config.fine_tune_learning_rate if warm else config.learning_rate
        epochs = config.fine_tune_epochs if warm else config.max_epochs
        _fit(trained, data, config, "fine-tune" if warm else "train", rate, epochs, report)
    assert model.output_shape[-1] == num_classes
    return trained


def _initial_model(
    data: TrainingData, config: TrainingConfig, base: Any | None, base_classes: list[str] | None
) -> tuple[Any, Any | None]:
    """(model, backbone to freeze first or None)."""
    import keras
    from keras import layers

    from workers.architectures import make_backbone_classifier, make_small_cnn

    num_classes = len(data.class_names)
    if base is not None and base_classes == data.class_names:
        return base, None  # same classes: keep training the whole model, gently
    if base is not None:
        # New or changed classes: keep the learned features, give the model a new head.
        features = base.layers[-2].output
        head = layers.Dense(num_classes, activation="softmax", name=f"head_{num_classes}")
        model = keras.Model(base.inputs, head(features), name=base.name)
        return model, keras.Model(base.inputs, features, name="features")
    architecture = config.resolved_architecture()
    size = tuple(data.train.images.shape[1:3])
    if architecture == "small_cnn":
        return make_small_cnn(size, num_classes, seed=config.seed), None
    model = make_backbone_classifier(
        size, num_classes, backbone=architecture, weights=config.weights
    )
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    # Without pretrained weights there is nothing to protect: train everything from the start.
    return model, backbone if config.weights else None


def _unfreeze(backbone: Any) -> None:
    import keras

    backbone.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # keep the pretrained statistics


def _fit(
    trained: TrainedModel,
    data: TrainingData,
    config: TrainingConfig,
    phase: str,
    learning_rate: float,
    epochs: int,
    report: Progress,
) -> None:
    import keras

    model = trained.model
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def on_epoch_end(epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        report({"phase": phase, "epoch": epoch + 1, "epochs": epochs,
                **{k: round(float(v), 4) for k, v in logs.items()}})  # fmt: skip

    history = model.fit(
        _dataset(data.train, config, training=True),
        validation_data=_dataset(data.validation, config, training=False),
        epochs=epochs,
        class_weight=_class_weights(data.train, len(data.class_names)),
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            ),
            keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end),
        ],
        verbose=0,
    )
    for name, values in history.history.items():
        trained.history.setdefault(name, []).extend(float(v) for v in values)
    trained.phases.extend([phase] * len(history.history.get("loss", [])))


def _dataset(split: Split, config: TrainingConfig, *, training: bool) -> Any:
    import keras
    import tensorflow as tf
    from keras import layers

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if training:
        ds = ds.shuffle(len(split.keys), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if training:
        # Small, label-preserving changes only: no flips (a flipped digit is another digit).
        augment = keras.Sequential(
            [
                layers.RandomTranslation(0.08, 0.08, fill_mode="nearest", seed=config.seed),
                layers.RandomRotation(0.04, fill_mode="nearest", seed=config.seed),
                layers.RandomZoom(0.08, fill_mode="nearest", seed=config.seed),
            ]
        )
        ds = ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def _class_weights(split: Split, num_classes: int) -> dict[int, float]:
    """Balanced weights (n / (k * count)) so a rare class still counts; absent classes get 1."""
    counts = np.bincount(split.labels, minlength=num_classes)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(split.labels) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}
