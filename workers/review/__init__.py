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
)
from workers.review.previews import PREVIEW_CONTENT_TYPE, preview_png
from workers.review.queue import Claim, ReviewQueue

__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "Action",
    "Claim",
    "InvalidDecision",
    "LeaseLost",
    "ReviewDesk",
    "ReviewError",
    "ReviewItem",
    "ReviewQueue",
    "StaleItem",
    "agreement_of",
    "count_reviewed_since",
    "preview_png",
]
