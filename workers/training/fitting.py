"""Fitting a classifier: from nothing, or warm-started from the production model.

Reads like keras.io: a pure builder, augmentation in the tf.data pipeline (training only),
class weights for imbalance, early stopping on validation, and two-phase fine-tuning where a
backbone is frozen first (train the head; then unfreeze with every BatchNorm frozen, at any
depth, at a low rate). Images stream from the decoded-image cache; training runs under a
``tf.distribute`` strategy over the host's GPUs, with the global batch scaled by replicas, and
in mixed precision where it pays (see ``workers.training.dtype_policy``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.training.augmentation import make_augmentation
from workers.training.dataset import Split, TrainingData
from workers.training.dtype_policy import global_policy, training_policy, with_policy

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is fitted. The fields without a default come from Settings
    (``labeler.wiring.training_config``); the others no variable sets."""

    input_size: tuple[int, int]  # a first model only; warm starts keep theirs
    architecture: str  # auto | small_cnn | mobilenet_v2 | efficientnet_b0
    weights: str | None  # None (offline), "imagenet", or a local weights file
    max_epochs: int
    fine_tune_epochs: int
    batch_size: int  # per replica: the global batch is this times the replica count
    seed: int
    augmentation: str  # see workers.training.augmentation
    shuffle_buffer: int  # decoded images held for shuffling: bounds training memory
    dtype_policy: str  # a Keras dtype policy, or auto: see workers.training.dtype_policy
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 4

    def resolved_architecture(self) -> str:
        if self.architecture != "auto":
            return self.architecture
        return "small_cnn" if max(self.input_size) <= 64 else "mobilenet_v2"


@dataclass
class TrainedModel:
    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)  # the phase of each epoch in ``history``
    replicas: int = 1  # devices the training ran on in sync
    policy: str = "float32"  # the Keras dtype policy it trained in (the model is float32)


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
    strategy = distribution_strategy()
    policy = training_policy(config.dtype_policy)
    # Variables (model and optimizer) are created once per replica; layers built here compute
    # in the policy's dtype.
    with strategy.scope(), global_policy(policy):
        if base_model is not None and (strategy.num_replicas_in_sync > 1 or policy != "float32"):
            base_model = with_policy(base_model, policy)
        model, backbone = _initial_model(data, config, base_model, base_classes)
        trained = TrainedModel(model, replicas=strategy.num_replicas_in_sync, policy=policy)
        num_classes = len(data.class_names)
        if backbone is not None:  # phase 1: only the new head learns
            backbone.trainable = False
            _fit(trained, data, config, "head", config.learning_rate, config.max_epochs, report)
            unfreeze_backbone(backbone)
            _fit(
                trained,
                data,
                config,
                "fine-tune",
                config.fine_tune_learning_rate,
                config.fine_tune_epochs,
                report,
            )
        else:
            warm = base_model is not None
            if warm:
                unfreeze_backbone(model)  # the production model's BN layers keep their statistics
            rate = config.fine_tune_learning_rate if warm else config.learning_rate
            epochs = config.fine_tune_epochs if warm else config.max_epochs
            _fit(trained, data, config, "fine-tune" if warm else "train", rate, epochs, report)
    if policy != "float32":
        trained.model = with_policy(model, "float32")  # what serving runs
    assert model.output_shape[-1] == num_classes
    return trained


def _initial_model(
    data: TrainingData, config: TrainingConfig, base: Any | None, base_classes: list[str] | None
) -> tuple[Any, Any | None]:
    """(model, backbone to freeze first or None)."""
    import keras
    from keras import layers

    from workers.training.architectures import make_backbone_classifier, make_small_cnn

    num_classes = len(data.class_names)
    if base is not None and base_classes == data.class_names:
        return base, None  # same classes: keep training the whole model, gently
    if base is not None:
        # New or changed classes: keep the learned features, give the model a new head.
        features = base.layers[-2].output
        head = layers.Dense(
            num_classes, activation="softmax", name=f"head_{num_classes}", dtype="float32"
        )
        model = keras.Model(base.inputs, head(features), name=base.name)
        return model, keras.Model(base.inputs, features, name="features")
    architecture = config.resolved_architecture()
    size = data.train.input_size
    if architecture == "small_cnn":
        return make_small_cnn(size, num_classes, seed=config.seed), None
    model = make_backbone_classifier(
        size, num_classes, backbone=architecture, weights=config.weights
    )
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    # Without pretrained weights there is nothing to protect: train everything from the start.
    return model, backbone if config.weights else None


def unfreeze_backbone(backbone: Any) -> None:
    """Make ``backbone`` trainable except every BatchNormalization layer in it, at any depth:
    frozen BN layers also run in inference mode, keeping the pretrained statistics."""
    import keras

    backbone.trainable = True
    for layer in _all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _all_layers(model: Any) -> Iterator[Any]:
    """Every layer under ``model``, descending into nested models (a warm start wraps them)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def distribution_strategy() -> Any:
    """Mirrored over the host's devices when it has several GPUs (or several logical CPUs,
    as tests configure), else the default strategy."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


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
    batch = config.batch_size * trained.replicas
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def on_epoch_end(epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        report(
            {
                "phase": phase,
                "epoch": epoch + 1,
                "epochs": epochs,
                **{k: round(float(v), 4) for k, v in logs.items()},
            }
        )

    history = model.fit(
        input_pipeline(data.train, config, batch, training=True),
        validation_data=input_pipeline(data.validation, config, batch, training=False),
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


def input_pipeline(split: Split, config: TrainingConfig, batch_size: int, *, training: bool) -> Any:
    """Streamed from the cache: training reshuffles the (small) list of entries every epoch,
    reads them in parallel, mixes the decoded images through a bounded buffer, then augments;
    batches are prefetched."""
    import tensorflow as tf

    from workers.training.dataset import entry_reader

    autotune = tf.data.AUTOTUNE
    if not training:
        ds = split.dataset()
    else:
        order = tf.data.Dataset.range(len(split)).shuffle(
            len(split), seed=config.seed, reshuffle_each_iteration=True
        )
        entries = tf.constant(split.entries)
        labels = tf.constant(split.labels)
        ds = order.map(lambda i: (tf.gather(entries, i), tf.gather(labels, i)))
        ds = ds.map(
            entry_reader(split.input_size), num_parallel_calls=autotune, deterministic=False
        )
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed)
    # Batches stay uint8 until augmentation needs floats (the model casts): 4x less buffered.
    ds = ds.batch(batch_size)
    augment = make_augmentation(config.augmentation, seed=config.seed) if training else None
    if augment is not None:
        ds = ds.map(
            lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y),
            num_parallel_calls=autotune,
        )
    return ds.prefetch(2)  # overlap one step; more only holds memory


def _class_weights(split: Split, num_classes: int) -> dict[int, float]:
    """Balanced weights (n / (k * count)) so a rare class still counts; absent classes get 1."""
    counts = np.bincount(split.labels, minlength=num_classes)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(split.labels) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}
