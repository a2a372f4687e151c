"""Fixed-batch prediction: the compiled models take exactly ``batch_size`` images per call, so a
last partial batch is padded with zeros (same shape: TensorFlow does not retrace, OpenVINO's
compiled shape holds) and the padding's outputs are dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["predict_padded"]


def predict_padded(
    predict_fn: Callable[[npt.NDArray[np.uint8]], Any],
    images: npt.NDArray[np.uint8],
    batch_size: int,
    classes: int,
) -> npt.NDArray[np.float32]:
    """Class probabilities for ``images`` (n, h, w, 3), any n, in calls of exactly
    ``batch_size``.

    Args:
        predict_fn: Runs one full batch; returns (batch_size, classes) scores. Its buffer may be
            reused by the next call: rows are copied out at once.
        images: The images, uint8.
        batch_size: The batch every call gets.
        classes: Columns of the result (for n == 0).

    Returns:
        (n, classes) float32 probabilities, row i for image i.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad: the same shape every call
            padding = np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        out.append(np.array(np.asarray(predict_fn(np.ascontiguousarray(chunk)))[:n], np.float32))
    if not out:
        return np.zeros((0, classes), np.float32)
    return np.concatenate(out)
