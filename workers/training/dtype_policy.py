"""Mixed-precision training, as the keras.io guide does it.

Under ``mixed_float16`` (or ``mixed_bfloat16``) layers compute in 16 bits while their variables
stay float32, so a GPU's tensor cores do the work; Keras wraps the optimizer in a
``LossScaleOptimizer`` for float16 at compile time. The softmax output stays float32, for its
numerics and so the served model's probabilities are float32. The model that is registered is
a float32 copy: the serving runtimes (TensorFlow on any CPU, the OpenVINO export) expect it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

POLICIES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def training_policy(setting: str) -> str:
    """The Keras dtype policy for a ``LABELER_TRAIN_DTYPE_POLICY`` setting: ``auto`` is
    ``mixed_float16`` when the host has a GPU (where it pays) and ``float32`` otherwise."""
    if setting not in POLICIES:
        raise ValueError(
            f"training dtype policy must be one of {', '.join(POLICIES)}, got {setting!r}"
        )
    if setting != "auto":
        return setting
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"


@contextmanager
def global_policy(policy: str) -> Iterator[None]:
    """Layers built inside compute in ``policy`` (unless given their own dtype)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def with_policy(model: Any, policy: str) -> Any:
    """A copy of ``model`` (nested models too) whose layers compute in ``policy``, except the
    output layer, which stays float32; the weights are copied. Also makes a model's variables
    anew, e.g. under a ``tf.distribute`` strategy's scope."""
    import keras

    output = model.layers[-1]

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if "dtype" in config:  # a layer; an op (e.g. preprocessing arithmetic) has none
            config["dtype"] = "float32" if layer is output else policy
        return layer.__class__.from_config(config)

    with global_policy(policy):
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
