"""obstore's errors (messages as obstore 0.12 words them) into the storage hierarchy: which
class, whether botocore's standard mode would retry it, and a short message."""

from __future__ import annotations

import pytest
from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)

from storage import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    WriteConflict,
)
from storage.s3_obstore import translate

_DEBUG = '\n\nDebug source:\nGeneric {\n    store: "S3",\n    source: RetryError(...)\n}'


def _answered(error: type[Exception], status: str, code: str = "", text: str = "") -> Exception:
    """An error after an HTTP answer, worded as obstore words it."""
    body = f"<?xml?><Error><Code>{code}</Code><Message>{text}</Message></Error>" if code else ""
    return error(
        "Generic S3 error: Error performing GET http://127.0.0.1:9/b/root/k in 2ms - "
        f"Server returned non-2xx status code: {status}: {body}{_DEBUG}"
    )


def _unanswered(cause: str, kind: str) -> Exception:
    """An error with no HTTP answer: refused, timed out, cut short."""
    return GenericError(
        f"Generic S3 error: Error performing GET x - {cause}{_DEBUG}\n kind: {kind},"
    )


SLOW_DOWN = "Please reduce your request rate."
CASES: list[tuple[Exception, type[StorageError], bool, str]] = [
    (_answered(GenericError, "503 Service Unavailable", "SlowDown", SLOW_DOWN),
     TransientStorageError, True, f"SlowDown for 'k': {SLOW_DOWN}"),
    (_answered(GenericError, "500 Internal Server Error", "InternalError", "oops"),
     TransientStorageError, True, "InternalError for 'k': oops"),
    (_answered(GenericError, "429 Too Many Requests"),
     TransientStorageError, True, "429 for 'k'"),
    (_answered(GenericError, "400 Bad Request", "RequestTimeout", "Socket not read"),
     TransientStorageError, True, "RequestTimeout for 'k': Socket not read"),
    (_answered(GenericError, "501 Not Implemented", "NotImplemented", "no"),
     TransientStorageError, False, "NotImplemented for 'k': no"),
    (_answered(GenericError, "400 Bad Request", "InvalidArgument", "bad"),
     PermanentStorageError, False, "InvalidArgument for 'k': bad"),
    (_unanswered("HTTP error: error sending request", "Timeout"),
     TransientStorageError, True, "S3 unreachable for 'k': error sending request (Timeout)"),
    (_unanswered("HTTP error: request or response body error", "Interrupted"),
     TransientStorageError, True,
     "S3 unreachable for 'k': request or response body error (Interrupted)"),
    (_answered(FileNotFoundError, "404 Not Found", "NoSuchKey", "The key does not exist."),
     ObjectNotFound, False, "no object at 'k'"),
    (_answered(FileNotFoundError, "404 Not Found", "NoSuchBucket", "No bucket"),
     PermanentStorageError, False, "NoSuchBucket for 'k': No bucket"),
    (_answered(PermissionDeniedError, "403 Forbidden"),
     AccessDenied, False, "403 for 'k'"),
    (_answered(UnauthenticatedError, "401 Unauthorized"),
     AccessDenied, False, "401 for 'k'"),
    (_answered(AlreadyExistsError, "412 Precondition Failed", "PreconditionFailed", "no"),
     WriteConflict, False, "'k' changed since it was read (PreconditionFailed)"),
    (_answered(AlreadyExistsError, "409 Conflict", "ConditionalRequestConflict", "busy"),
     WriteConflict, False, "'k' changed since it was read (ConditionalRequestConflict)"),
    (_answered(PreconditionError, "412 Precondition Failed", "PreconditionFailed", "no"),
     WriteConflict, False, "'k' changed since it was read (PreconditionFailed)"),
    (_answered(PreconditionError, "404 Not Found", "NoSuchKey", "gone"),
     WriteConflict, False, "'k' was deleted since it was read"),
    (NotSupportedError("Operation not supported: no multipart here"),
     PermanentStorageError, False,
     "S3 request for 'k' failed: Operation not supported: no multipart here"),
    (ValueError("Could not parse path: empty path segment"),
     InvalidKey, False, "invalid request for 'k': Could not parse path: empty path segment"),
]  # fmt: skip


@pytest.mark.parametrize(("raised", "expected", "retried", "message"), CASES)
def test_obstore_errors_translate(
    raised: Exception, expected: type[StorageError], retried: bool, message: str
) -> None:
    error, retryable = translate(raised, "k")
    assert type(error) is expected
    assert retryable is retried
    assert str(error) == message
