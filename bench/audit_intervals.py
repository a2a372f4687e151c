"""Do the audit intervals keep their promise? Repeated blind audits of a synthetic population
whose truth is known, at several audit rates and class mixes.

For each setting, each repetition draws a population of auto-accepted labels (class by the mix,
right with the class's precision), audits it as the workers do (the first ``floor`` labels of
each class, then a uniform ``rate`` share: the hash of key, ETag and version is uniform, which
``tests/unit/workers/test_audit_stats.py`` checks), states the estimate with
:func:`workers.review.auto_quality`, and checks whether each 95% interval contains the
population's true precision (overall, and per class). Coverage should be near 0.95.

Writes ``bench/results/audit_intervals.json``; figures are recorded, never asserted.
Run: ``.venv/bin/python -m bench.audit_intervals [--repetitions 1000]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench.header import phase, run_header, trusted, write_result
from workers.review import VersionCounts, auto_quality

POPULATION = 20_000  # auto-accepted labels of one model version
FLOOR = 30  # LABELER_AUDIT_MIN_PER_CLASS's default
RATES = (0.005, 0.02, 0.05)
# name -> (share of labels, true precision) per class
MIXES: dict[str, list[tuple[float, float]]] = {
    "balanced": [(0.2, 0.97), (0.2, 0.95), (0.2, 0.9), (0.2, 0.85), (0.2, 0.99)],
    "skewed": [(0.90, 0.98), (0.05, 0.9), (0.03, 0.8), (0.015, 0.95), (0.005, 0.7)],
    "two_classes_near_one": [(0.7, 0.995), (0.3, 0.97)],
}


def simulate(
    mix: list[tuple[float, float]], rate: float, repetitions: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Coverage and mean width of the overall and per-class intervals over ``repetitions``."""
    shares = np.array([s for s, _ in mix])
    precision = np.array([p for _, p in mix])
    names = [f"c{i}" for i in range(len(mix))]
    overall_hits, overall_widths, errors = 0, [], []
    class_hits = np.zeros(len(mix))
    class_measured = np.zeros(len(mix))
    class_widths: list[list[float]] = [[] for _ in mix]
    audited_total = 0
    for _ in range(repetitions):
        labels = rng.choice(len(mix), size=POPULATION, p=shares)
        right = rng.random(POPULATION) < precision[labels]
        ordinal = _ordinal_within_class(labels, len(mix))
        audited = (ordinal <= FLOOR) | (rng.random(POPULATION) < rate)
        audited_total += int(audited.sum())
        counts = _counts(labels, right, audited, names)
        stated = auto_quality(counts)
        truth = right.mean()
        overall_hits += stated["low"] <= truth <= stated["high"]
        overall_widths.append(stated["high"] - stated["low"])
        errors.append(abs(stated["precision"] - truth))
        for c, name in enumerate(names):
            entry = stated["by_class"].get(name)
            if entry is None or not entry["audited"]:
                continue
            class_truth = right[labels == c].mean()
            class_measured[c] += 1
            class_hits[c] += entry["low"] <= class_truth <= entry["high"]
            class_widths[c].append(entry["high"] - entry["low"])
    return {
        "rate": rate,
        "mean_audits": audited_total / repetitions,
        "overall": {
            "coverage": overall_hits / repetitions,
            "mean_width": float(np.mean(overall_widths)),
            "mean_abs_error": float(np.mean(errors)),
        },
        "by_class": {
            name: {
                "share": float(shares[c]),
                "precision": float(precision[c]),
                "coverage": float(class_hits[c] / class_measured[c]),
                "mean_width": float(np.mean(class_widths[c])),
            }
            for c, name in enumerate(names)
        },
    }


def _ordinal_within_class(labels: np.ndarray, classes: int) -> np.ndarray:
    """1-based arrival order of each label within its class (what the Redis counter returns)."""
    ordinal = np.zeros(len(labels), dtype=np.int64)
    for c in range(classes):
        where = labels == c
        ordinal[where] = np.arange(1, int(where.sum()) + 1)
    return ordinal


def _counts(
    labels: np.ndarray, right: np.ndarray, audited: np.ndarray, names: list[str]
) -> VersionCounts:
    auto, audits = {}, {}
    for c, name in enumerate(names):
        mine = labels == c
        auto[name] = int(mine.sum())
        agreed = int((mine & audited & right).sum())
        corrected = int((mine & audited & ~right).sum())
        audits[name] = {"agreed": agreed, "corrected": corrected}
    return VersionCounts(1, auto, {"audit": audits})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {"header": run_header()}
    settings: list[dict[str, Any]] = []
    with phase({}) as record:
        for mix_name, mix in MIXES.items():
            for rate in RATES:
                found = simulate(mix, rate, args.repetitions, rng)
                settings.append({"mix": mix_name, **found})
                o = found["overall"]
                print(
                    f"{mix_name:>22} rate {rate:<6} audits {found['mean_audits']:7.0f}  "
                    f"coverage {o['coverage']:.3f}  width {o['mean_width']:.4f}"
                )
    result |= {
        "population": POPULATION,
        "floor": FLOOR,
        "repetitions": args.repetitions,
        "seed": args.seed,
        "phase": record,
        "trusted": trusted(record),  # a coverage is not a rate, but say how busy the machine was
        "settings": settings,
    }
    print(write_result("audit_intervals", result))


if __name__ == "__main__":
    main()
