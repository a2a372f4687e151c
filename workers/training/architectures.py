"""Pure model builders. Preprocessing (rescaling) lives inside the model, so training and
serving cannot drift: every model takes RGB pixel values in 0..255."""

from __future__ import annotations

from typing import Any


def make_small_cnn(input_size: tuple[int, int], num_classes: int, *, seed: int = 0) -> Any:
    """A small CNN for small images (digits, icons); trains in seconds on a CPU."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*input_size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.25)(x)
    # float32 softmax, also under a mixed-precision policy (see workers.training.dtype_policy)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def make_backbone_classifier(
    input_size: tuple[int, int],
    num_classes: int,
    *,
    backbone: str = "mobilenet_v2",
    weights: str | None = None,
) -> Any:
    """A Keras Applications backbone (``weights=None`` offline, ``"imagenet"`` or a file) + head."""
    import keras
    from keras import layers

    builders = {
        "mobilenet_v2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2),
        "efficientnet_b0": (keras.applications.EfficientNetB0, keras.applications.efficientnet),
    }
    if backbone not in builders:
        raise ValueError(f"backbone must be one of {sorted(builders)}, got {backbone!r}")
    build, module = builders[backbone]
    inputs = keras.Input(shape=(*input_size, 3))
    x = module.preprocess_input(inputs) if backbone == "mobilenet_v2" else inputs
    base = build(include_top=False, weights=weights, input_shape=(*input_size, 3), pooling="avg")
    x = base(x)
    x = layers.Dropout(0.2)(x)
    # float32 softmax, also under a mixed-precision policy (see workers.training.dtype_policy)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_classifier")
