"""Object stores (S3 and a local directory), key layout, and the records we write."""

from storage.base import Blob, ObjectInfo, ObjectStore, validate_key
from storage.errors import (
    AccessDenied,
    InvalidKey,
    InvalidStoreUri,
    LabelerError,
    ObjectNotFound,
    ObjectTooLarge,
    PermanentError,
    PermanentStorageError,
    StorageError,
    TransientError,
    TransientStorageError,
    WriteConflict,
    error_classes,
)
from storage.keys import Area, label_key, source_key
from storage.local import LocalFiles, LocalStore
from storage.records import (
    ErrorReason,
    LabelRecord,
    PastLabel,
    Prediction,
    RecordError,
    Review,
    ReviewOutcome,
    Timings,
)
from storage.s3 import S3Client, S3Options, S3Store, make_s3_client
from storage.uri import check_store_uri, join_uri, open_store

__all__ = [
    "AccessDenied",
    "Area",
    "Blob",
    "ErrorReason",
    "InvalidKey",
    "InvalidStoreUri",
    "LabelRecord",
    "LabelerError",
    "LocalFiles",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "PastLabel",
    "PermanentError",
    "PermanentStorageError",
    "Prediction",
    "RecordError",
    "Review",
    "ReviewOutcome",
    "S3Client",
    "S3Options",
    "S3Store",
    "StorageError",
    "Timings",
    "TransientError",
    "TransientStorageError",
    "WriteConflict",
    "check_store_uri",
    "error_classes",
    "join_uri",
    "label_key",
    "make_s3_client",
    "open_store",
    "source_key",
    "validate_key",
]
