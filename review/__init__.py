"""The review app: a web adapter over the review queue and decisions in ``workers``."""

from review.app import LOCAL_REVIEWER, ReviewConfig, create_app
from review.auth import (
    KEY_COMMAND,
    InvalidCredentials,
    Reviewers,
    hash_password,
    verify_password,
    weak_secret,
)

__all__ = [
    "KEY_COMMAND",
    "LOCAL_REVIEWER",
    "InvalidCredentials",
    "ReviewConfig",
    "Reviewers",
    "create_app",
    "hash_password",
    "verify_password",
    "weak_secret",
]
