"""The review loop's engine: the queue of records waiting for a person, decisions, and preview
images.
"""

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
)
from workers.review.previews import PREVIEW_CONTENT_TYPE, preview_png
from workers.review.queue import Claim, ReviewQueue

__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "Action",
    "Claim",
    "DecisionContended",
    "InvalidDecision",
    "LeaseLost",
    "ReviewDesk",
    "ReviewError",
    "ReviewItem",
    "ReviewQueue",
    "StaleItem",
    "count_reviewed_since",
    "preview_png",
]
