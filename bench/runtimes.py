"""Runtimes compared (issue 15): TensorFlow FP32, OpenVINO FP32 and OpenVINO INT8.

The bench/inference.py extension for issue 15, kept in its own module so each stays small. On
this machine, one run: the bare model of each runtime (MobileNetV2 224x224, batch 32,
pre-decoded input), then end to end through a real ``labeler worker`` on a local store, 640x480
and 4000x3000 JPEGs, per runtime, with the per-image stage times the records carry (fetch,
decode, infer). Every phase records the CPU other processes used meanwhile. The model has random
weights (nothing is downloaded), so INT8's agreement with FP32 is meaningless here: the bars are
set to approve it, and the INT8 figures are throughput only. Writes
``bench/results/runtimes.json``.

    .venv/bin/python -m bench.runtimes [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.header import phase, run_header, trusted, write_result

if TYPE_CHECKING:
    from workers.training import Int8Bars

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

RUNTIMES = (("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "int8"))
CALIBRATION_IMAGES = 300


def _bench_bars() -> Int8Bars:
    """The model has random weights: INT8 is approved so its speed can be measured, never its
    accuracy."""
    from workers.training import Int8Bars

    return Int8Bars(min_agreement=0.0, max_accuracy_drop=1.0, calibration_images=CALIBRATION_IMAGES)


def bare_runs(root: Path, model_path: Path, calls: int) -> list[dict[str, Any]]:
    """Images/s of each runtime's ``predict`` alone (the ceiling), pre-decoded batches."""
    import numpy as np

    from bench.deployment import MODEL_NAME
    from bench.images import make_image_set
    from bench.measure import (
        INPUT_SIZE,
        decoded_batches,
        load_bare_model,
        measure_bare,
    )
    from storage import LocalStore
    from storage.registry import ModelRegistry
    from workers.inference import OpenVinoModel, load_keras_file, read_ir
    from workers.training import HeldOut, optimize_version

    images = make_image_set((640, 480), 40)
    batches = decoded_batches(images, count=10)
    calibration = np.concatenate(batches)[:CALIBRATION_IMAGES]
    tf_model = load_bare_model(model_path, root)
    registry = ModelRegistry(LocalStore(root), MODEL_NAME)
    started = time.perf_counter()
    optimize_version(
        registry,
        1,
        load_keras_file(model_path),
        calibration=calibration,
        held_out=HeldOut(batches[0]),
        bars=_bench_bars(),
    )
    export_seconds = round(time.perf_counter() - started, 1)
    metadata = registry.metadata(1)
    models = {("tensorflow", "fp32"): tf_model}
    for precision in ("fp32", "int8"):
        ir = read_ir(*registry.ir_bytes(1, precision))
        models["openvino", precision] = OpenVinoModel(ir, metadata, 32, precision)
    runs = []
    for (runtime, precision), model in models.items():
        with phase({"runtime": runtime, "serving_format": precision}) as record:
            record |= measure_bare(model, batches[:2], calls)
        runs.append(record)
        print(f"  bare {runtime} {precision}: {record['images_per_second']} images/s", flush=True)
    runs[0]["export_and_int8_seconds"] = export_seconds
    assert INPUT_SIZE == (224, 224)
    return runs


def end_to_end_runs(root: Path, model_path: Path, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Each runtime through a real worker on a ``file://`` store, both image sets."""
    from bench.deployment import Services, local_deployment
    from bench.images import keys_for, make_image_set, place_local
    from bench.measure import Run, record_timings, timed_run, warm_up

    sets = [make_image_set((640, 480), 40), make_image_set((4000, 3000), 8)]
    runs = []
    with ExitStack() as stack:
        services = Services(root / "services", stack)
        for db, (runtime, precision) in enumerate(RUNTIMES):
            deployment = local_deployment(
                services, db, model_path, runtime=runtime, serving_format=precision
            )
            if precision == "int8":
                add_int8(deployment, model_path, sets[0])
            worker = services.start_worker(deployment, f"worker-{runtime}-{precision}")
            assert deployment.local_root is not None
            pids = {"worker": deployment.worker_pids(), "redis": services.redis_pid()}
            for images in sets:
                name = f"{runtime}-{precision}-{images.name}"
                run = Run(name, keys_for(name, counts[images.name]), 32)
                warm = Run(f"warm-{name}", keys_for(f"warm-{name}", 32), 32)
                incoming = deployment.local_root / "incoming"
                place_local(images, incoming, warm.keys + run.keys)
                warm_up(deployment, warm)
                with phase(
                    {
                        "name": name,
                        "runtime": runtime,
                        "serving_format": precision,
                        "image_set": images.name,
                    },
                    *pids["worker"],
                ) as record:
                    record |= timed_run(deployment, run, pids)
                record["record_timings_ms"] = record_timings(deployment.labels, run.keys)
                runs.append(record)
                print(f"  {name}: {record['images_per_second']} images/s", flush=True)
            worker.stop()
    return runs


def add_int8(deployment: Any, model_path: Path, images: Any) -> None:
    """Give version 1 of ``deployment`` its INT8 artifact (the import made FP32 only),
    calibrated on ``images`` and approved by the bench's bars."""
    from bench.deployment import MODEL_NAME
    from storage.registry import ModelRegistry
    from workers.inference import load_keras_file
    from workers.training import HeldOut, optimize_version

    calibration = _calibration(images)
    optimize_version(
        ModelRegistry(deployment_models(deployment), MODEL_NAME),
        1,
        load_keras_file(model_path),
        calibration=calibration,
        held_out=HeldOut(calibration[:32]),
        bars=_bench_bars(),
    )


def deployment_models(deployment: Any) -> Any:
    from storage import Area, open_store

    return open_store(deployment.settings.area_uri(Area.MODELS))


def _calibration(images: Any) -> Any:
    import numpy as np

    from bench.measure import decoded_batches

    return np.concatenate(decoded_batches(images, count=10))[:300]


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """Ratios to TensorFlow FP32 (bare, and end to end per image set), each marked trusted."""
    bare = {(r["runtime"], r["serving_format"]): r for r in result["bare"]}
    tf = bare["tensorflow", "fp32"]
    out: dict[str, Any] = {}
    for key, record in bare.items():
        label = "bare " + " ".join(key)
        out[label] = {
            "ratio_to_tensorflow": round(record["images_per_second"] / tf["images_per_second"], 2),
            "trusted": trusted(record, tf),
        }
    e2e = {(r["runtime"], r["serving_format"], r["image_set"]): r for r in result["end_to_end"]}
    for (runtime, precision, image_set), record in e2e.items():
        reference = e2e["tensorflow", "fp32", image_set]
        out[f"end to end {runtime} {precision} {image_set}"] = {
            "images_per_second": record["images_per_second"],
            "ratio_to_tensorflow": round(
                record["images_per_second"] / reference["images_per_second"], 2
            ),
            "stage_ms_per_image": record["record_timings_ms"],
            "trusted": trusted(record, reference),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images: check that it works")
    args = parser.parse_args()
    result: dict[str, Any] = {
        **run_header(),
        "benchmark": "runtimes (issue 15)",
        "quick": args.quick,
        "bench_int8_bars": vars(_bench_bars()),
    }
    counts = {"640x480": 128 if args.quick else 640, "4000x3000": 32 if args.quick else 128}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-runtimes-") as tmp:
        from bench.deployment import save_mobilenet

        model_path = save_mobilenet(Path(tmp) / "mobilenet.keras")
        result["bare"] = bare_runs(Path(tmp) / "bare", model_path, 5 if args.quick else 20)
        result["end_to_end"] = end_to_end_runs(Path(tmp) / "e2e", model_path, counts)
    result["comparison"] = compare(result)
    name = "runtimes.quick" if args.quick else "runtimes"
    print(f"results: {write_result(name, result)}")


if __name__ == "__main__":
    main()
