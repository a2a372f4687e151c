"""Errors of the work itself, in labeler's family (``storage.errors``) by what a task should do."""

from __future__ import annotations

from storage import PermanentError, TransientError


class ModelUnavailable(TransientError):
    """No production model yet, or it could not be loaded now: retry the task later."""


class InvalidModel(PermanentError, ValueError):
    """A model file that cannot be served (unsafe, wrong shape, unreadable): fix the file."""
