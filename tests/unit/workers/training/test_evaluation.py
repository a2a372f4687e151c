"""The promotion gate and review thresholds, on numbers built by hand."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from labeler.settings import Settings
from labeler.wiring import retrain_config
from workers.training import GatePolicy, calibrate_thresholds, decide, evaluate, split_of

NAMES = ["cat", "dog"]


def gate(**changes: Any) -> GatePolicy:
    """The configured gate (Settings' defaults) with ``changes``."""
    return replace(retrain_config(Settings()).gate, **changes)


def _evaluation(y_true: list[int], y_pred: list[int]):  # type: ignore[no-untyped-def]
    probs = np.eye(2, dtype=np.float32)[y_pred] * 0.9 + 0.05
    keys = [f"k{i}" for i in range(len(y_true))]
    return evaluate(keys, np.array(y_true), probs, NAMES)


GOOD = _evaluation([0, 0, 1, 1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 1, 0, 1, 0, 1])
SLIGHTLY_WORSE = _evaluation([0, 0, 1, 1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 1, 0, 1, 0, 0])
DOGS_COLLAPSE = _evaluation([0, 0, 1, 1, 0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 0, 1])


def test_first_model_needs_only_the_floor() -> None:
    assert decide(SLIGHTLY_WORSE, None, gate(min_accuracy=0.85)).passed
    refused = decide(SLIGHTLY_WORSE, None, gate(min_accuracy=0.95))
    assert not refused.passed
    assert refused.reasons == ["accuracy 0.9000 vs floor 0.9500"]


def test_worse_than_production_is_refused() -> None:
    decision = decide(SLIGHTLY_WORSE, GOOD, gate(min_accuracy=0.5))
    assert not decision.passed
    assert any("macro F1" in reason for reason in decision.reasons)
    assert decide(GOOD, SLIGHTLY_WORSE, gate(min_accuracy=0.5)).passed


def test_a_class_recall_collapse_is_refused_even_within_f1_tolerance() -> None:
    policy = gate(min_accuracy=0.5, max_macro_f1_drop=1.0, max_recall_drop=0.1)
    decision = decide(DOGS_COLLAPSE, GOOD, policy)
    assert not decision.passed
    assert decision.reasons == ["recall dropped more than 0.10 for: dog 1.000->0.400"]


def test_thresholds_reach_the_target_precision() -> None:
    # Class 0 predictions sorted by score: right, right, wrong, right.
    probs = np.array([[0.99, 0.01], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], np.float32)
    y_true = np.array([0, 0, 1, 0])
    thresholds = calibrate_thresholds(y_true, probs, NAMES, target_precision=0.75, default=0.5)
    assert thresholds == {"cat": pytest.approx(0.7), "dog": 0.5}
    strict = calibrate_thresholds(y_true, probs, NAMES, target_precision=1.0, default=0.5)
    assert strict["cat"] == pytest.approx(0.9)


def test_split_is_stable_and_ignores_the_class_folder() -> None:
    keys = [f"{c}/img-{i}.png" for c in ("a", "b") for i in range(2000)]
    splits = [split_of(k) for k in keys]
    assert split_of("a/img-7.png") == split_of("b/img-7.png")
    share = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["test"] == pytest.approx(0.1, abs=0.03)
