"""How often reviewers agreed with the model on the low-confidence items they decided.

This is not the precision of automatic labels: those items were picked because the model was
unsure, so the figure says how good the unsure labels are, per predicted class.
"""

from __future__ import annotations


def agreement_of(tallies: dict[str, dict[str, int]]) -> dict[str, float]:
    """Share of ``agreed`` among agreed + corrected decisions, per predicted class.

    Args:
        tallies: first decisions per predicted class and outcome (``ReviewQueue.tallies``).

    Returns:
        ``{class: ratio}`` for each class with at least one agreed or corrected decision.
    """
    result = {}
    for label, outcomes in tallies.items():
        judged = outcomes.get("agreed", 0) + outcomes.get("corrected", 0)
        if judged:
            result[label] = outcomes.get("agreed", 0) / judged
    return result
