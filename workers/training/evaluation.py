"""Evaluation with scikit-learn, review thresholds, and the promotion gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.training.dataset import Split


@dataclass
class Evaluation:
    """Figures of one model on one labeled split; ``predictions`` lets anyone recompute them."""

    accuracy: float
    macro_f1: float
    weighted_f1: float
    per_class: dict[str, dict[str, float]]  # name -> precision, recall, f1-score, support
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    keys: list[str],
    y_true: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    class_names: list[str],
) -> Evaluation:
    """Accuracy, per-class precision/recall/F1/support, averages and the confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = list(range(len(class_names)))
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(
        y_true,
        y_pred,
        labels=labels,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    scores = probabilities.max(axis=1)
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(report["macro avg"]["f1-score"]),
        weighted_f1=float(report["weighted avg"]["f1-score"]),
        per_class={name: _floats(report[name]) for name in class_names},
        macro_avg=_floats(report["macro avg"]),
        weighted_avg=_floats(report["weighted avg"]),
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        class_names=list(class_names),
        predictions=[
            {"key": k, "true": class_names[t], "predicted": class_names[p], "score": float(s)}
            for k, t, p, s in zip(keys, y_true, y_pred, scores, strict=True)
        ],
    )


def predict_split(model: Any, split: Split, batch_size: int = 64) -> npt.NDArray[np.float32]:
    """The model's class probabilities for every image of ``split``, in key order, streamed
    from the image cache (memory holds a batch, not the split)."""
    if len(split) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    images = split.dataset().map(lambda x, _: x).batch(batch_size)  # uint8: the model casts
    probabilities: npt.NDArray[np.float32] = model.predict(images.prefetch(1), verbose=0)
    return probabilities


def calibrate_thresholds(
    y_true: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    class_names: list[str],
    *,
    target_precision: float,
    default: float,
) -> dict[str, float]:
    """Per class, the lowest top-1 score at which that label is right ``target_precision`` of
    the time on the validation split. Labels scoring below it get ``needs_review``."""
    y_pred = probabilities.argmax(axis=1)
    scores = probabilities.max(axis=1)
    thresholds = {}
    for index, name in enumerate(class_names):
        mine = y_pred == index
        if not mine.any():
            thresholds[name] = default
            continue
        order = np.argsort(-scores[mine])
        correct = (y_true[mine] == index)[order]
        precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
        ok = np.nonzero(precision >= target_precision)[0]
        # The longest prefix (highest-score first) still precise enough sets the cut-off.
        thresholds[name] = float(scores[mine][order][ok[-1]]) if len(ok) else 1.0
    return thresholds


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must achieve to be promoted; from Settings (``LABELER_GATE_*``)."""

    min_accuracy: float
    max_macro_f1_drop: float
    max_recall_drop: float


@dataclass
class GateDecision:
    passed: bool
    checks: list[dict[str, Any]]

    @property
    def reasons(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["passed"]]


def decide(
    candidate: Evaluation, production: Evaluation | None, policy: GatePolicy
) -> GateDecision:
    """The floor always; against production (same test split): macro F1 and per-class recall."""
    checks = [
        _check(
            "accuracy floor",
            candidate.accuracy >= policy.min_accuracy,
            f"accuracy {candidate.accuracy:.4f} vs floor {policy.min_accuracy:.4f}",
        )
    ]
    if production is not None:
        drop = production.macro_f1 - candidate.macro_f1
        checks.append(
            _check(
                "not worse than production",
                drop <= policy.max_macro_f1_drop,
                f"macro F1 {candidate.macro_f1:.4f} vs production {production.macro_f1:.4f} "
                f"(allowed drop {policy.max_macro_f1_drop:.4f})",
            )
        )
        collapsed = []
        for name, figures in candidate.per_class.items():
            before = production.per_class.get(name, {}).get("recall")
            if before is not None and before - figures["recall"] > policy.max_recall_drop:
                collapsed.append(f"{name} {before:.3f}->{figures['recall']:.3f}")
        checks.append(
            _check(
                "no class recall collapse",
                not collapsed,
                "recall dropped more than "
                f"{policy.max_recall_drop:.2f} for: {', '.join(collapsed) or 'none'}",
            )
        )
    return GateDecision(all(c["passed"] for c in checks), checks)


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}
