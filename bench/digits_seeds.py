"""The digits-from-scratch accuracy over several seeds: how much margin a test can assert.

The digits-from-scratch test in ``tests/workers/training/test_training_scale.py``
retrains the first digits model from nothing (1,797 images, split 80/10/10 by key hash) and
asserts a test-set accuracy. One seeded run is one draw: on a test set of ~200 images one image
is half a point, and thread scheduling on a busy machine changes the floating-point sums. This
runs the same retrain under ``SEEDS`` (TrainingConfig's default first), in this process as the
test does, and records every figure, their spread, and the foreign CPU load while each ran.

Writes bench/results/digits_seeds.json. Usage: ``python -m bench.digits_seeds``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.header import phase, run_header, trusted, write_result

SEEDS = (1337, 1, 2, 3, 4)


def main() -> None:
    result = run_header()
    runs = [_one(seed) for seed in SEEDS]
    accuracies = [run["test_accuracy"] for run in runs]
    result["digits_seeds"] = {
        "runs": runs,
        "accuracy_min": min(accuracies),
        "accuracy_max": max(accuracies),
        "accuracy_mean": round(statistics.mean(accuracies), 4),
        "accuracy_stdev": round(statistics.stdev(accuracies), 4),
        "test_images": runs[0]["test_images"],
        "trusted": trusted(*runs),
    }
    path = write_result("digits_seeds", result)
    print(json.dumps(result["digits_seeds"], indent=2))
    print(f"wrote {path}")


def _one(seed: int) -> dict[str, Any]:
    """One retrain from nothing, as the test runs it (in this process), measured."""
    from testbed.digits import digits_retrainer
    from workers.inference import configure_pillow

    configure_pillow(50_000_000)
    record: dict[str, Any] = {"seed": seed}
    with tempfile.TemporaryDirectory(prefix="labeler-bench-seeds-") as tmp:
        retrainer, record["images"] = digits_retrainer(Path(tmp), seed=seed)
        with phase(record):
            started = time.perf_counter()
            outcome = retrainer.run()
            seconds = time.perf_counter() - started
        record.update(_evaluation(Path(tmp) / "reports"))
    record.update(
        {
            "test_accuracy": round(outcome.accuracy, 4),
            "test_macro_f1": round(outcome.macro_f1, 4),
            "promoted": outcome.promoted,
            "seconds": round(seconds, 1),
        }
    )
    print(json.dumps(record), file=sys.stderr)
    return record


def _evaluation(reports: Path) -> dict[str, Any]:
    """The size of the test set: the sum of the confusion matrix the retrain reported."""
    for path in reports.rglob("evaluation.json"):
        return {"test_images": _matrix_total(json.loads(path.read_text()))}
    return {}


def _matrix_total(node: Any) -> int | None:
    if isinstance(node, dict):
        if "confusion_matrix" in node:
            return sum(sum(row) for row in node["confusion_matrix"])
        for value in node.values():
            if (found := _matrix_total(value)) is not None:
                return found
    return None


if __name__ == "__main__":
    main()
