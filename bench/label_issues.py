"""Label-issue finding: recall and precision on the digits with a known share of labels moved to
a wrong class, and what it costs (issue 25).

For each noise share, the small CNN learns from the noisy labels (as a retrain would), then the
real engine embeds every image (penultimate layer), predicts out of sample with 5-fold logistic
regression, and asks cleanlab for the issues. Recall: moved labels found / moved; precision:
moved labels found / flagged. Cost: seconds of each step and this process's peak RSS. The scale
step times the logistic regression and cleanlab on ``--scale`` synthetic embeddings (10 classes,
128 wide, the same share moved), the part whose cost grows with the data set.

Writes bench/results/label_issues.json; figures are recorded, never asserted.

    .venv/bin/python -m bench.label_issues [--noise 0.05 0.1] [--scale 100000]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

from bench.header import phase, run_header, trusted, write_result

WIDTH, CLASSES = 256, 10  # the engine's widest embedding (LabelIssueConfig.max_width)


def _move(labels: np.ndarray, share: float, seed: int) -> set[int]:
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(labels), int(share * len(labels)), replace=False)
    labels[moved] = (labels[moved] + rng.integers(1, CLASSES, len(moved))) % CLASSES
    return {int(i) for i in moved}


def _score(flagged: set[int], moved: set[int]) -> dict[str, Any]:
    hits = len(flagged & moved)
    return {
        "moved": len(moved),
        "flagged": len(flagged),
        "found": hits,
        "recall": round(hits / max(len(moved), 1), 3),
        "precision": round(hits / max(len(flagged), 1), 3),
    }


def digits_run(share: float) -> dict[str, Any]:
    from labeler.sample_data import digit_samples
    from testbed.digits import CLASSES as NAMES
    from testbed.digits import INPUT_SIZE
    from workers.inference import decode_image
    from workers.training import make_small_cnn
    from workers.training.label_issues import (
        LabelIssueConfig,
        embed,
        out_of_sample_probabilities,
        rank_issues,
    )

    samples = digit_samples()
    images = np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in samples])
    labels = np.array([int(s.label) for s in samples], np.int64)
    moved = _move(labels, share, seed=3)
    record: dict[str, Any] = {"noise": share, "images": len(labels)}
    with phase(record):
        started = time.perf_counter()
        model = make_small_cnn(INPUT_SIZE, len(NAMES), seed=7)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
        record["train_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        batches = (images[i : i + 256] for i in range(0, len(images), 256))
        embeddings = embed(model, batches, len(images), max_width=LabelIssueConfig().max_width)
        record["embed_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        probabilities = out_of_sample_probabilities(embeddings, labels, folds=5, seed=0)
        record["cross_val_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        keys = [s.key for s in samples]
        issues, _ = rank_issues(keys, labels, probabilities, NAMES, limit=len(keys))
        record["cleanlab_seconds"] = round(time.perf_counter() - started, 2)
    record["embedding_width"] = int(embeddings.shape[1])
    record.update(_score({keys.index(i.key) for i in issues}, moved))
    return record


def scale_run(count: int, share: float) -> dict[str, Any]:
    """The per-image cost beyond the model: k-fold regression and cleanlab on ``count`` rows."""
    from workers.training.label_issues import out_of_sample_probabilities, rank_issues

    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, count).astype(np.int64)
    centres = rng.standard_normal((CLASSES, WIDTH), dtype=np.float32)
    # Made in place, in float32: the peak RSS below is the engine's, not a float64 temporary's.
    embeddings = rng.standard_normal((count, WIDTH), dtype=np.float32)
    embeddings *= 1.2
    embeddings += centres[labels]
    moved = _move(labels, share, seed=1)
    record: dict[str, Any] = {"images": count, "embedding_width": WIDTH, "noise": share}
    with phase(record):
        started = time.perf_counter()
        probabilities = out_of_sample_probabilities(embeddings, labels, folds=5, seed=0)
        record["cross_val_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        keys = [str(i) for i in range(count)]
        issues, _ = rank_issues(
            keys, labels, probabilities, [str(c) for c in range(CLASSES)], count
        )
        record["cleanlab_seconds"] = round(time.perf_counter() - started, 2)
    record["embeddings_mb"] = round(embeddings.nbytes / 2**20, 1)
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    record.update(_score({int(i.key) for i in issues}, moved))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--scale", type=int, default=100_000, help="0 to skip")
    args = parser.parse_args()
    result: dict[str, Any] = {**run_header(), "digits": [], "scale": None}
    # Scale first: its peak RSS is then the regression's and cleanlab's, before TensorFlow.
    if args.scale:
        result["scale"] = scale_run(args.scale, args.noise[0])
        print(f"scale: {result['scale']}", flush=True)
    for share in args.noise:
        run = digits_run(share)
        print(
            f"digits, {share:.0%} moved: recall {run['recall']}, precision {run['precision']} "
            f"({run['found']}/{run['moved']} found, {run['flagged']} flagged)",
            flush=True,
        )
        result["digits"].append(run)
    runs = [*result["digits"], *([result["scale"]] if result["scale"] else [])]
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["trusted"] = trusted(*runs)
    print(write_result("label_issues", result))


if __name__ == "__main__":
    main()
