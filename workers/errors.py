"""Errors of the work itself, split by what a task should do with them."""

from __future__ import annotations


class ModelUnavailable(Exception):
    """No production model yet, or it could not be loaded now: retry the task later."""


class InvalidModel(ValueError):
    """A model file that cannot be served (unsafe, wrong shape, unreadable): fix the file."""
