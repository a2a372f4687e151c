"""The review loop's engine: the queue of records waiting for a person, decisions, preview
images, and the agreement rate of reviewed items.
"""

from workers.review.agreement import agreement_of
from workers.review.decisions import (
    Action,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewError,
    ReviewItem,
    StaleItem,
    count_reviewed_since,
    is_class_name,
)
from workers.review.previews import (
    PREVIEW_CONTENT_TYPE,
    PREVIEW_MAX_PIXELS,
    PreviewBusy,
    PreviewRenderer,
    preview_png,
)
from workers.review.queue import Claim, ReviewQueue

__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "PREVIEW_MAX_PIXELS",
    "Action",
    "Claim",
    "InvalidDecision",
    "LeaseLost",
    "PreviewBusy",
    "PreviewRenderer",
    "ReviewDesk",
    "ReviewError",
    "ReviewItem",
    "ReviewQueue",
    "StaleItem",
    "agreement_of",
    "count_reviewed_since",
    "is_class_name",
    "preview_png",
]
