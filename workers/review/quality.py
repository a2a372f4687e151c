"""What the counters say: precision of automatic labels (from blind audits) and agreement on
reviewed low-confidence items, per class and overall, each with a 95% Wilson interval.

Precision of a class = agreed / (agreed + corrected) among its audits; discarded audits (the
image belongs to no class) are counted apart. The overall precision weights each class by its
share of auto-accepted labels (a stratified estimate: the per-class audit floor over-samples rare
classes, and weighting undoes that), with an interval on Kish's effective sample size
``1 / sum(w_c**2 / n_c)``.
"""

from __future__ import annotations

from typing import Any

from storage import ReviewOutcome
from workers.review.audits import AUDIT, REVIEWED, QualityLedger, VersionCounts, wilson_interval

_AGREED, _CORRECTED, _DISCARDED = (o.value for o in ReviewOutcome)
MIN_AUDITS_TO_ACT = 30  # fewer judged audits than this: an interval too wide to act on


def auto_quality(counts: VersionCounts) -> dict[str, Any]:
    """The precision of one version's automatic labels, overall and ``by_class``."""
    by_class: dict[str, dict[str, Any]] = {}
    for label in sorted(set(counts.auto) | set(counts.decisions.get(AUDIT, {}))):
        outcomes = counts.outcomes(AUDIT, label)
        entry = {"labels": counts.auto.get(label, 0), **_proportion(outcomes)}
        by_class[label] = entry
    measured = {c: e for c, e in by_class.items() if e["audited"] and e["labels"]}
    total = sum(e["labels"] for e in measured.values())
    overall: dict[str, Any] = {"precision": None, "low": None, "high": None}
    if total:
        weights = {c: e["labels"] / total for c, e in measured.items()}
        point = sum(weights[c] * e["precision"] for c, e in measured.items())
        effective = 1.0 / sum(weights[c] ** 2 / e["audited"] for c, e in measured.items())
        low, high = wilson_interval(point * effective, effective)
        overall = {"precision": point, "low": low, "high": high}
    return {
        "labels": sum(counts.auto.values()),
        "audited": sum(e["audited"] for e in by_class.values()),
        "discarded": sum(e["discarded"] for e in by_class.values()),
        **overall,
        "by_class": by_class,
    }


def reviewed_quality(counts: VersionCounts) -> dict[str, Any]:
    """Agreement on reviewed low-confidence items: how often a person kept the model's label.

    Not the precision of automatic labels: these items scored under their thresholds."""
    by_class = {
        label: _proportion(outcomes, name="agreement")
        for label, outcomes in sorted(counts.decisions.get(REVIEWED, {}).items())
    }
    agreed = sum(counts.outcomes(REVIEWED, c).get(_AGREED, 0) for c in by_class)
    judged = sum(e["audited"] for e in by_class.values())
    low, high = wilson_interval(agreed, judged)
    for entry in by_class.values():
        entry["reviewed"] = entry.pop("audited")
    return {
        "reviewed": judged,
        "discarded": sum(e["discarded"] for e in by_class.values()),
        "agreement": agreed / judged if judged else None,
        "low": low if judged else None,
        "high": high if judged else None,
        "by_class": by_class,
    }


def label_quality(
    ledger: QualityLedger, production_version: int | None, target: float
) -> dict[str, Any]:
    """The ``label_quality`` object of ``labeler status --json`` and ``/api/stats``.

    Args:
        ledger: The counters.
        production_version: The version to report first (None: the newest with counts).
        target: The promised precision of automatic labels (the thresholds' calibration target).
    """
    versions = ledger.versions()
    version = production_version if production_version is not None else max(versions, default=0)
    counts = ledger.counts(version)
    auto = auto_quality(counts)
    earlier: list[dict[str, Any]] = []
    for v in versions:
        old = auto_quality(ledger.counts(v)) if v < version else None
        if old is not None and old["audited"]:
            earlier.append({"model_version": v, "auto": old})
    return {
        "model_version": version,
        "target": target,
        "auto": auto,
        "reviewed": reviewed_quality(counts),
        "below_target": below_target(auto, target),
        "earlier": earlier,
    }


def below_target(auto: dict[str, Any], target: float) -> list[str]:
    """Classes whose audited upper bound is under ``target`` with enough audits to say so."""
    return [
        label
        for label, entry in auto["by_class"].items()
        if entry["audited"] >= MIN_AUDITS_TO_ACT and entry["high"] is not None
        if entry["high"] < target
    ]


def _proportion(outcomes: dict[str, int], name: str = "precision") -> dict[str, Any]:
    agreed, corrected = outcomes.get(_AGREED, 0), outcomes.get(_CORRECTED, 0)
    judged = agreed + corrected
    low, high = wilson_interval(agreed, judged)
    return {
        "audited": judged,
        "discarded": outcomes.get(_DISCARDED, 0),
        "outcomes": dict(outcomes),
        name: agreed / judged if judged else None,
        "low": low if judged else None,
        "high": high if judged else None,
    }
