"""A registered version's OpenVINO artifacts: FP32 IR always, INT8 only where it earns its place.

INT8 is calibrated on images the model knows (the validation split, or an import's calibration
directory) and judged against FP32 on held-out images (the test split, or the rest of the
directory): it is approved only if top-1 agreement with FP32 and the accuracy drop (when labels
are known) meet the bars. A refused INT8 is still stored, with its reason; workers serve FP32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from storage import ObjectStore
from storage.registry import Int8Approval, ModelRegistry, RuntimeArtifacts
from workers.inference import (
    ImageRejected,
    OpenVinoModel,
    check_export,
    decode_image,
    export_ir,
    ir_files,
    quantize_int8,
    read_ir,
)
from workers.training.dataset import TrainingData
from workers.training.evaluation import evaluate

log = logging.getLogger(__name__)

_CHECK_IMAGES = 16  # synthetic images to verify an export when no real ones were given


@dataclass(frozen=True)
class Int8Bars:
    """What INT8 must achieve against FP32 on held-out images to be served. The fields without
    a default come from Settings (``LABELER_INT8_*``)."""

    min_agreement: float
    max_accuracy_drop: float  # 0.005: 0.5 points
    calibration_images: int
    # INT8 is judged on at most this many test images, held in memory whatever the split holds
    # (2,000 at 224x224 is 300 MB): enough to see a 1% disagreement.
    held_out_images: int = 2000


@dataclass(frozen=True)
class HeldOut:
    """Images to judge the runtimes on; ``labels`` (class indices) when known."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64] | None = None
    keys: list[str] | None = None


@dataclass
class Optimization:
    """What was stored, and one row per runtime for the evaluation report."""

    artifacts: RuntimeArtifacts
    rows: list[dict[str, Any]]


def judge_int8(
    fp32: npt.NDArray[np.float32],
    int8: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64] | None,
    bars: Int8Bars,
) -> Int8Approval:
    """Approve INT8 when it agrees with FP32 often enough and loses little accuracy."""
    if len(fp32) == 0:
        return Int8Approval(approved=False, reason="no held-out images to compare INT8 with FP32")
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    figures = {"agreement": agreement, "images": float(len(fp32))}
    reasons = []
    if agreement < bars.min_agreement:
        reasons.append(f"top-1 agreement with FP32 {agreement:.2%} < {bars.min_agreement:.2%}")
    if labels is not None:
        before = float((fp32.argmax(1) == labels).mean())
        after = float((int8.argmax(1) == labels).mean())
        figures |= {"fp32_accuracy": before, "int8_accuracy": after}
        figures["accuracy_drop"] = before - after
        if before - after > bars.max_accuracy_drop:
            reasons.append(
                f"accuracy drop {100 * (before - after):.2f} points > "
                f"{100 * bars.max_accuracy_drop:.2f}"
            )
    if reasons:
        return Int8Approval(approved=False, reason="; ".join(reasons), figures=figures)
    return Int8Approval(
        approved=True,
        reason=f"top-1 agreement with FP32 {agreement:.2%} >= {bars.min_agreement:.2%}",
        figures=figures,
    )


def optimize_version(
    registry: ModelRegistry,
    version: int,
    model: Any,
    *,
    calibration: npt.NDArray[np.uint8],
    held_out: HeldOut,
    bars: Int8Bars,
    batch_size: int = 32,
) -> Optimization:
    """Export ``model`` (the version's Keras model) to FP32 IR, quantize it to INT8 when there are
    calibration images, judge INT8, and store the artifacts next to the version."""
    metadata = registry.metadata(version)
    check = held_out.images[:batch_size] if len(held_out.images) else _synthetic(metadata)
    started = time.perf_counter()
    ir = export_ir(model)
    diff = check_export(model, ir, check)
    files = {"fp32": ir_files(ir)}
    log.info(
        "exported %s v%s to OpenVINO FP32 in %.1fs (max diff %.1e)",
        metadata.name,
        version,
        time.perf_counter() - started,
        diff,
    )
    tf_probs, tf_rate = _timed(lambda x: model.predict(x.astype(np.float32), verbose=0), held_out)
    fp32 = OpenVinoModel(read_ir(*files["fp32"]), metadata, batch_size, "fp32")
    fp32_probs, fp32_rate = _timed(fp32.predict, held_out)
    rows = [
        _row("tensorflow", "fp32", tf_probs, None, tf_rate, held_out, metadata.class_names),
        _row("openvino", "fp32", fp32_probs, tf_probs, fp32_rate, held_out, metadata.class_names),
    ]
    approval = None
    if len(calibration):
        started = time.perf_counter()
        files["int8"] = ir_files(quantize_int8(ir, calibration[: bars.calibration_images]))
        log.info(
            "quantized %s v%s to INT8 in %.1fs",
            metadata.name,
            version,
            time.perf_counter() - started,
        )
        int8 = OpenVinoModel(read_ir(*files["int8"]), metadata, batch_size, "int8")
        int8_probs, int8_rate = _timed(int8.predict, held_out)
        approval = judge_int8(fp32_probs, int8_probs, held_out.labels, bars)
        rows.append(
            _row(
                "openvino",
                "int8",
                int8_probs,
                fp32_probs,
                int8_rate,
                held_out,
                metadata.class_names,
            )
        )
        rows[-1] |= {"approved": approval.approved, "reason": approval.reason}
    artifacts = RuntimeArtifacts(formats=list(files), int8=approval)
    registry.put_artifacts(version, files, artifacts)
    return Optimization(artifacts, rows)


def calibration_from_store(
    store: ObjectStore, input_size: tuple[int, int], *, limit: int, max_pixels: int
) -> tuple[npt.NDArray[np.uint8], HeldOut]:
    """An import's ``--calibration-dir``: every fifth image (in key order) is held out to judge
    INT8 against FP32; up to ``limit`` of the rest calibrate. Undecodable files are skipped."""
    calibration: list[npt.NDArray[np.uint8]] = []
    held_out: list[npt.NDArray[np.uint8]] = []
    for n, info in enumerate(sorted(store.list(), key=lambda i: i.key)):
        try:
            pixels = decode_image(store.get(info.key).data, input_size, max_pixels=max_pixels)
        except ImageRejected as exc:
            log.warning("calibration: skipping %s: %s", info.key, exc)
            continue
        (held_out if n % 5 == 4 else calibration).append(pixels)
    return _stack(calibration[:limit], input_size), HeldOut(_stack(held_out, input_size))


def calibration_from_training(
    data: TrainingData, class_names: list[str], bars: Int8Bars
) -> tuple[npt.NDArray[np.uint8], HeldOut]:
    """A registered version's split: validation calibrates, test judges. Test images of classes
    the version does not know are left out (their labels have no output to compare with)."""
    index = np.array([class_names.index(n) if n in class_names else -1 for n in data.class_names])
    labels = index[data.test.labels] if len(data.test) else np.zeros(0, np.int64)
    judged = data.test.take(bars.held_out_images, where=labels >= 0)
    held_out = HeldOut(judged.array(), index[judged.labels].astype(np.int64), judged.keys)
    return data.validation.take(bars.calibration_images).array(), held_out


def _stack(images: list[npt.NDArray[np.uint8]], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    return np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)


def _synthetic(metadata: Any) -> npt.NDArray[np.uint8]:
    height, width = metadata.input_size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (_CHECK_IMAGES, height, width, 3), dtype=np.uint8)


def _timed(
    predict: Callable[[npt.NDArray[np.uint8]], Any], held_out: HeldOut
) -> tuple[npt.NDArray[np.float32], float | None]:
    if len(held_out.images) == 0:
        return np.zeros((0, 0), np.float32), None
    started = time.perf_counter()
    probs = np.asarray(predict(held_out.images), np.float32)
    elapsed = time.perf_counter() - started
    return probs, (len(probs) / elapsed if len(probs) and elapsed > 0 else None)


def _row(
    runtime: str,
    precision: str,
    probs: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32] | None,
    rate: float | None,
    held_out: HeldOut,
    class_names: list[str],
) -> dict[str, Any]:
    """One report row: accuracy and macro-F1 (when labels are known), agreement, images/s."""
    row: dict[str, Any] = {
        "runtime": runtime,
        "serving_format": precision,
        "images": len(probs),
        "images_per_second": rate,
        "accuracy": None,
        "macro_f1": None,
        "agreement": None,
    }
    if reference is not None and len(probs):
        row["agreement"] = float((probs.argmax(1) == reference.argmax(1)).mean())
    if held_out.labels is not None and len(probs):
        keys = held_out.keys or [str(i) for i in range(len(probs))]
        figures = evaluate(keys, held_out.labels, probs, class_names)
        row |= {"accuracy": figures.accuracy, "macro_f1": figures.macro_f1}
    return row
