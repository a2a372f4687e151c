"""OpenVINO behind ModelRuntime: the same answers as TensorFlow, INT8 only when approved, and
missing or broken artifacts fallen back from or refused. Real models (the session's digits
CNN), real OpenVINO and NNCF, the registry over a real local directory."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from labeler.settings import Settings
from labeler.wiring import int8_bars
from storage import LocalStore
from storage.keys import openvino_key
from storage.registry import ModelMetadata, ModelRegistry
from testbed.digits import CLASSES, INPUT_SIZE
from tests.conftest import DigitsFixture
from workers.inference import ModelRuntime, ModelUnavailable, decode_image, load_keras_file
from workers.training import report_html
from workers.training.optimization import HeldOut, Optimization, optimize_version

pytestmark = pytest.mark.slow


def _pixels(digits: DigitsFixture) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    images = np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in digits.held_out])
    return images, np.array([int(s.label) for s in digits.held_out], np.int64)


def _register(root: Path, digits: DigitsFixture) -> ModelRegistry:
    registry = ModelRegistry(LocalStore(root), "digits")
    metadata = ModelMetadata(
        name="digits", version=1, class_names=CLASSES, input_size=INPUT_SIZE, source="imported"
    )
    registry.promote(registry.register(digits.model_path.read_bytes(), metadata).version)
    return registry


def _optimize(
    registry: ModelRegistry, digits: DigitsFixture, calibration: npt.NDArray[np.uint8]
) -> Optimization:
    images, labels = _pixels(digits)
    return optimize_version(
        registry,
        1,
        load_keras_file(digits.model_path),
        calibration=calibration,
        held_out=HeldOut(images[150:], labels[150:]),
        bars=int8_bars(Settings()),
        batch_size=16,
    )


@pytest.fixture(scope="module")
def optimized(
    digits: DigitsFixture, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelRegistry, Optimization]:
    """The digits model with FP32 and INT8 IR, INT8 calibrated on 150 real digits."""
    registry = _register(tmp_path_factory.mktemp("registry"), digits)
    return registry, _optimize(registry, digits, _pixels(digits)[0][:150])


def test_openvino_fp32_gives_tensorflow_answers(
    optimized: tuple[ModelRegistry, Optimization], digits: DigitsFixture
) -> None:
    registry, _ = optimized
    images, _ = _pixels(digits)
    tf_model = ModelRuntime(registry, batch_size=16, runtime="tensorflow").current()
    ov_model = ModelRuntime(
        registry, batch_size=16, runtime="openvino", serving_format="fp32"
    ).current()

    assert (tf_model.runtime, ov_model.runtime, ov_model.serving_format) == (
        "tensorflow",
        "openvino",
        "fp32",
    )
    expected, got = tf_model.predict(images), ov_model.predict(images[:299])  # a padded batch
    assert (got.argmax(1) == expected[:299].argmax(1)).all()
    assert np.abs(got - expected[:299]).max() <= 1e-4


def test_int8_of_digits_is_approved_and_served(
    optimized: tuple[ModelRegistry, Optimization], digits: DigitsFixture
) -> None:
    registry, result = optimized
    images, _ = _pixels(digits)
    assert result.artifacts.int8 is not None
    assert result.artifacts.int8.approved, result.rows
    assert result.artifacts.int8.figures["agreement"] >= 0.99

    model = ModelRuntime(
        registry, batch_size=16, runtime="openvino", serving_format="auto"
    ).current()
    fp32 = ModelRuntime(
        registry, batch_size=16, runtime="openvino", serving_format="fp32"
    ).current()
    assert model.serving_format == "int8"
    agreement = (model.predict(images).argmax(1) == fp32.predict(images).argmax(1)).mean()
    assert agreement >= 0.99
    rows = {(r["runtime"], r["serving_format"]): r for r in result.rows}
    assert set(rows) == {("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "int8")}
    assert rows["openvino", "int8"]["accuracy"] >= 0.9
    assert rows["openvino", "int8"]["approved"]


def test_int8_calibrated_on_blank_images_is_refused_and_fp32_serves(
    digits: DigitsFixture, tmp_path: Path
) -> None:
    registry = _register(tmp_path, digits)
    blank = np.zeros((64, *INPUT_SIZE, 3), np.uint8)

    result = _optimize(registry, digits, blank)

    approval = result.artifacts.int8
    assert approval is not None
    assert not approval.approved
    assert "agreement with FP32" in approval.reason
    model = ModelRuntime(
        registry, batch_size=16, runtime="openvino", serving_format="int8"
    ).current()
    assert (model.runtime, model.serving_format) == ("openvino", "fp32")
    page = report_html_for(result).decode()
    assert "refused, FP32 serves" in page
    assert "agreement with FP32" in page


def report_html_for(result: Optimization) -> bytes:
    from workers.training.evaluation import GateDecision, evaluate

    probs = np.eye(2, dtype=np.float32)
    evaluation = evaluate(["a", "b"], np.array([0, 1]), probs, ["x", "y"])
    return report_html("t", evaluation, None, GateDecision(True, []), b"", None, result.rows)


def test_version_without_artifacts_serves_with_tensorflow_and_says_so(
    digits: DigitsFixture, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = _register(tmp_path, digits)
    with caplog.at_level(logging.WARNING):
        model = ModelRuntime(registry, batch_size=16, runtime="openvino").current()
    assert model.runtime == "tensorflow"
    assert "labeler models optimize digits 1" in caplog.text


@pytest.mark.parametrize("damage", ["garbage xml", "missing bin", "bad manifest"])
def test_broken_ir_is_refused_and_the_last_good_version_keeps_serving(
    digits: DigitsFixture, tmp_path: Path, damage: str
) -> None:
    registry = _register(tmp_path, digits)
    runtime = ModelRuntime(registry, batch_size=16, runtime="openvino", reload_seconds=0)
    assert runtime.current().version == 1  # TensorFlow: v1 has no IR
    metadata = registry.metadata(1)
    v2 = registry.register(digits.model_path.read_bytes(), metadata).version
    _optimize_version(registry, v2, digits)
    store = registry.store
    if damage == "garbage xml":
        store.put(openvino_key("digits", v2, "fp32/model.xml"), b"<net><layers>not an IR")
    elif damage == "missing bin":
        store.delete(openvino_key("digits", v2, "fp32/model.bin"))
    else:
        store.put(openvino_key("digits", v2, "manifest.json"), b'{"precisions": 3}')
    registry.promote(v2)

    assert runtime.current().version == 1  # refused: still serving v1
    fresh = ModelRuntime(registry, batch_size=16, runtime="openvino", serving_format="fp32")
    with pytest.raises(ModelUnavailable, match="cannot be served safely"):
        fresh.current()


def _optimize_version(registry: ModelRegistry, version: int, digits: DigitsFixture) -> None:
    images, labels = _pixels(digits)
    optimize_version(
        registry,
        version,
        load_keras_file(digits.model_path),
        calibration=np.zeros((0, *INPUT_SIZE, 3), np.uint8),
        held_out=HeldOut(images[:32], labels[:32]),
        bars=int8_bars(Settings()),
        batch_size=16,
    )


def test_int8_that_agrees_but_loses_accuracy_is_refused() -> None:
    from workers.training.optimization import judge_int8

    labels = np.arange(200) % 2
    fp32 = np.eye(2, dtype=np.float32)[labels]  # always right
    int8 = fp32.copy()
    int8[:2] = int8[:2, ::-1]  # 2 of 200 flipped: 99% agreement, accuracy drop 1 point
    approval = judge_int8(fp32, int8, labels, replace(int8_bars(Settings()), min_agreement=0.99))
    assert not approval.approved
    assert approval.reason == "accuracy drop 1.00 points > 0.50"
    assert judge_int8(fp32, int8, None, replace(int8_bars(Settings()), min_agreement=0.99)).approved
