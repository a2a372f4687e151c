"""The review loop's engine: the queue of records waiting for a person, decisions, preview
images, and blind audits of automatic labels with their quality estimates.
"""

from workers.review.audits import (
    AuditPolicy,
    AuditSampler,
    QualityLedger,
    VersionCounts,
    audit_fraction,
    wilson_interval,
)
from workers.review.decisions import (
    Action,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewError,
    ReviewItem,
    StaleItem,
    count_reviewed_since,
)
from workers.review.previews import PREVIEW_CONTENT_TYPE, preview_png
from workers.review.quality import auto_quality, below_target, label_quality, reviewed_quality
from workers.review.queue import Claim, ReviewQueue

__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "Action",
    "AuditPolicy",
    "AuditSampler",
    "Claim",
    "InvalidDecision",
    "LeaseLost",
    "QualityLedger",
    "ReviewDesk",
    "ReviewError",
    "ReviewItem",
    "ReviewQueue",
    "StaleItem",
    "VersionCounts",
    "audit_fraction",
    "auto_quality",
    "below_target",
    "count_reviewed_since",
    "label_quality",
    "preview_png",
    "reviewed_quality",
    "wilson_interval",
]
