"""The fixed-batch loop both model runtimes share: every call gets exactly ``batch_size`` images,
the last partial batch is padded, and only real images' rows come back."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from workers.inference.padding import predict_padded

CLASSES = 3


class Recorder:
    """A fake compiled model: scores each image by its first pixel; remembers the shapes."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.buffer = np.zeros((0, CLASSES), np.float32)

    def __call__(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.shapes.append(batch.shape)
        # Reuse one buffer, as OpenVINO's infer request does: the helper must copy rows out.
        self.buffer = np.resize(self.buffer, (len(batch), CLASSES))
        self.buffer[:] = batch[:, 0, 0, :1].astype(np.float32)
        return self.buffer


def images(n: int) -> npt.NDArray[np.uint8]:
    out = np.zeros((n, 2, 2, 3), np.uint8)
    out[:, 0, 0, 0] = np.arange(1, n + 1)
    return out


@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
def test_every_call_has_the_batch_shape_and_only_real_rows_return(n: int) -> None:
    model = Recorder()

    probs = predict_padded(model, images(n), 4, CLASSES)

    assert set(model.shapes) == {(4, 2, 2, 3)}  # no call ever sees another shape
    assert len(model.shapes) == -(-n // 4)
    assert probs.shape == (n, CLASSES)
    assert probs.dtype == np.float32
    assert probs[:, 0].tolist() == list(range(1, n + 1))  # row i is image i, padding dropped


def test_the_last_partial_batch_is_padded_with_zeros() -> None:
    seen = []

    def model(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        seen.append(batch.copy())
        return np.zeros((len(batch), CLASSES), np.float32)

    predict_padded(model, images(6), 4, CLASSES)

    assert seen[1][:2, 0, 0, 0].tolist() == [5, 6]
    assert not seen[1][2:].any()


def test_no_images_make_no_call() -> None:
    model = Recorder()

    probs = predict_padded(model, images(0), 4, CLASSES)

    assert model.shapes == []
    assert probs.shape == (0, CLASSES)


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        predict_padded(Recorder(), images(1), 0, CLASSES)
