"""The review loop's engine: the queue of records waiting for a person, decisions, preview
images, the agreement rate of reviewed items, and blind audits of automatic labels with their
quality estimates.
"""

from workers.review.agreement import agreement_of
from workers.review.audits import (
    AuditSampler,
    QualityLedger,
    VersionCounts,
    audit_fraction,
    wilson_interval,
)
from workers.review.config import ReviewPolicy
from workers.review.decisions import (
    Action,
    DecisionContended,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewError,
    ReviewItem,
    StaleItem,
    count_reviewed_since,
    is_class_name,
    validate_item_key,
)
from workers.review.ordering import REVIEW_ORDERS, ReviewOrder, margin
from workers.review.previews import (
    PREVIEW_CONTENT_TYPE,
    PREVIEW_MAX_PIXELS,
    PreviewBusy,
    PreviewRenderer,
    preview_png,
)
from workers.review.quality import auto_quality, below_target, label_quality, reviewed_quality
from workers.review.queue import Claim, ReviewQueue

__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "PREVIEW_MAX_PIXELS",
    "REVIEW_ORDERS",
    "Action",
    "AuditSampler",
    "Claim",
    "DecisionContended",
    "InvalidDecision",
    "LeaseLost",
    "PreviewBusy",
    "PreviewRenderer",
    "QualityLedger",
    "ReviewDesk",
    "ReviewError",
    "ReviewItem",
    "ReviewOrder",
    "ReviewPolicy",
    "ReviewQueue",
    "StaleItem",
    "VersionCounts",
    "agreement_of",
    "audit_fraction",
    "auto_quality",
    "below_target",
    "count_reviewed_since",
    "is_class_name",
    "label_quality",
    "margin",
    "preview_png",
    "reviewed_quality",
    "validate_item_key",
    "wilson_interval",
]
