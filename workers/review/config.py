"""The review loop's one configuration."""

from __future__ import annotations

from dataclasses import dataclass

from workers.review.ordering import ReviewOrder


@dataclass(frozen=True)
class ReviewPolicy:
    """How the review loop runs. Every field comes from Settings (``labeler.wiring.review_policy``).

    Attributes:
        lease_seconds: How long a claimed item stays with its reviewer before it returns.
        order: Which pending item is served next (see :mod:`workers.review.ordering`).
        audit_rate: Share of auto-accepted labels also queued as blind audits.
        audit_min_per_class: Audits at least this many labels of each class and model version.
    """

    lease_seconds: float
    order: ReviewOrder
    audit_rate: float
    audit_min_per_class: int

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(f"audit rate must be within [0, 1], got {self.audit_rate}")
        if self.audit_min_per_class < 0:
            raise ValueError(f"audit_min_per_class must be >= 0, got {self.audit_min_per_class}")
