"""Settings' fields, one class per area, combined by :class:`labeler.settings.Settings`.

Each field is ``LABELER_<FIELD NAME IN CAPITALS>`` in the environment; its description is the
README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from labeler.settings_checks import Augmentation, Cron, HttpUrl, RedisUrl, SqsQueueUrl, StoreUri


class BrokerFields(BaseModel):
    """The Redis broker (and result backend)."""

    broker_url: RedisUrl = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for the task queues: redis://host:port/db or rediss:// for TLS.",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (kept out of the URL so it never reaches a log)."
    )
    private_redis: bool = Field(
        False,
        description="`labeler up` runs its own redis-server under DATA_DIR/redis even if one "
        "answers at BROKER_URL, and commands on DATA_DIR use the running stack's (the demo's "
        "data directory remembers this: its review queue lives there).",
    )
    result_backend: RedisUrl | None = Field(
        None, description="Where task results live; defaults to the broker's Redis."
    )


class StorageFields(BaseModel):
    """Where objects live: one storage URI, per-area overrides, and the S3 client."""

    data_dir: Path = Field(
        Path("data"), description="Root of the embedded local store and of `labeler up`'s state."
    )
    storage_uri: StoreUri | None = Field(
        None,
        description="Root of every area: s3://bucket/prefix or file:///dir. Default: DATA_DIR.",
    )
    incoming_uri: StoreUri | None = Field(None, description="Override: where images are dropped.")
    labels_uri: StoreUri | None = Field(None, description="Override: where label records go.")
    training_uri: StoreUri | None = Field(None, description="Override: training/<class>/<file>.")
    models_uri: StoreUri | None = Field(None, description="Override: the model registry.")
    reports_uri: StoreUri | None = Field(None, description="Override: evaluation reports.")
    s3_endpoint_url: HttpUrl | None = Field(
        None, description="S3 endpoint for MinIO/moto, e.g. http://minio:9000. Unset: AWS."
    )
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_max_attempts: int = Field(5, ge=1, le=20, description="Total tries per S3 request.")
    s3_connect_timeout: float = Field(5.0, gt=0, le=120, description="S3 connect timeout (s).")
    s3_read_timeout: float = Field(30.0, gt=0, le=600, description="S3 read timeout (s).")
    s3_max_pool_connections: int = Field(
        32, ge=1, le=512, description="boto3's S3 connection pool (lists, heads, file uploads)."
    )


class InferenceFields(BaseModel):
    """Batching, decoding limits and task time limits of inference."""

    model_name: str = Field(
        "default", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Registry model name."
    )
    batch_max_images: int = Field(
        128,
        ge=1,
        le=1024,
        description="Images per classify_batch task (dispatcher flushes here). Several model "
        "batches per task let fetching and decoding overlap inference.",
    )
    batch_max_wait_ms: int = Field(
        500, ge=0, le=600_000, description="Longest a partial batch waits before it is sent."
    )
    inference_batch_size: int = Field(
        32, ge=1, le=512, description="Images per model call (the compiled input signature)."
    )
    io_threads: int = Field(16, ge=1, le=256, description="Concurrent GETs and writes per task.")
    decode_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        le=64,
        description="Decoding threads per worker process. Default: the number of CPUs.",
    )
    max_object_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Larger objects get `too_large` without a download."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="More pixels than this is a `decompression_bomb`."
    )
    model_reload_seconds: float = Field(
        5.0, ge=0, le=3600, description="How often a worker checks the production alias."
    )
    inference_time_limit_seconds: int = Field(
        300, ge=10, description="Hard limit of one classify_batch task (soft limit: 80%)."
    )
    training_time_limit_seconds: int = Field(
        7000, ge=10, description="Hard limit of one retrain (soft limit: 95%)."
    )
    retry_backoff_max_seconds: int = Field(
        60,
        ge=1,
        le=3600,
        description="A batch hit by a storage outage (or waiting for a first model) is retried "
        "after 2, 4, 8... s, at most this long apart, until it succeeds.",
    )
    visibility_timeout_seconds: int = Field(
        7200,
        ge=10,
        description="Redis re-delivers a task whose worker vanished (killed with its parent) "
        "after this long, if that worker served the training queue; must exceed the training "
        "time limit and the inference one plus the retry backoff cap. A killed child's task is "
        "re-queued at once.",
    )
    inference_visibility_timeout_seconds: int = Field(
        600,
        ge=10,
        description="The same for workers serving only the inference queue; must exceed the "
        "inference time limit plus the retry backoff cap (a retried batch waits reserved).",
    )


class DispatchFields(BaseModel):
    """Event intake, reconciliation, backpressure and de-duplication."""

    events_list: str = Field(
        "labeler:events",
        min_length=1,
        description="Redis list (broker DB) bucket events are pushed to: MinIO notify_redis "
        "(access format) or S3 event JSON. In-flight events wait in `<list>:processing`.",
    )
    scan_interval_seconds: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="How often the dispatcher reconciles incoming/ against labels/ (sends "
        "objects whose record is missing or older). Default: 3600 where events announce new "
        "objects (S3 events, or the local watcher), else 30: the scan is the source. 0: never.",
    )
    backlog_high_water: int = Field(
        10_000, ge=1, description="Images waiting in the inference queue at which intake pauses."
    )
    backlog_low_water: int | None = Field(
        None, ge=0, description="Intake resumes below this many. Default: half the high-water."
    )
    dedup_window_hours: float = Field(
        6.0,
        gt=0,
        le=720,
        description="How long the dispatcher remembers a sent (key, ETag) so a repeated event "
        "is not sent again: the in-flight window. Later repeats are no-ops at the worker.",
    )
    events_sqs_url: SqsQueueUrl | None = Field(
        None,
        description="The URL of an SQS queue the dispatcher long-polls for S3 notifications "
        "(direct, SNS-wrapped or EventBridge). Give the queue a redrive policy: unparseable "
        "messages are left for it to dead-letter. Uses the S3 credentials, and the S3 region "
        "unless an AWS queue URL names another.",
    )
    events_sqs_endpoint_url: HttpUrl | None = Field(
        None,
        description="SQS endpoint, if not the queue URL's own: by default an AWS queue URL "
        "uses AWS's endpoint for its region, any other (a local emulator's) its "
        "scheme://host:port.",
    )
    events_sqs_visibility_seconds: int = Field(
        60,
        ge=10,
        le=43200,
        description="How long a received SQS message stays hidden; extended while it waits for "
        "its batch. A killed dispatcher's messages come back after this long.",
    )
    watch_incoming: bool = Field(
        True,
        description="On a local incoming/ directory, pick up completed files at once through "
        "the filesystem's notifications (inotify). false: the scan alone finds them.",
    )


class RetrainFields(BaseModel):
    """The nightly retrain: fitting, the promotion gate, thresholds and audits."""

    retrain_cron: Cron = Field(
        "0 2 * * *", description="When beat queues a retrain: 5-field cron, UTC."
    )
    retrain_expires_seconds: int = Field(
        3600, ge=60, description="A scheduled retrain not started by then is dropped, not queued."
    )
    train_image_size: int = Field(
        224, ge=8, le=1024, description="Input size (square) of a first model; later runs keep it."
    )
    train_architecture: str = Field(
        "auto",
        pattern=r"^(auto|small_cnn|mobilenet_v2|efficientnet_b0)$",
        description="First model: small_cnn, mobilenet_v2, efficientnet_b0, or auto (by size).",
    )
    train_weights: str | None = Field(
        None, description="Backbone weights for a first model: unset, `imagenet`, or a file path."
    )
    train_max_epochs: int = Field(30, ge=1, le=1000, description="Epochs at most (early stop).")
    train_fine_tune_epochs: int = Field(10, ge=1, le=1000, description="Fine-tuning epochs.")
    train_seed: int = Field(1337, description="Seed for splits of work, shuffling and init.")
    train_augment: Augmentation = Field(
        "translate:0.08,rotate:0.04,zoom:0.08",
        description="Training augmentation: comma-separated flip, rotate:F, zoom:F, "
        "translate:F, contrast:F, or none. Photos want `flip`; digits must not be flipped.",
    )
    train_batch_size: int = Field(
        32, ge=1, le=4096, description="Batch per device; the global batch scales with devices."
    )
    train_shuffle_buffer: int = Field(
        2048, ge=1, description="Decoded images held for shuffling: bounds training memory."
    )
    train_dtype_policy: str = Field(
        "auto",
        pattern=r"^(auto|float32|mixed_float16|mixed_bfloat16)$",
        description="Keras dtype policy of training: float32, mixed_float16, mixed_bfloat16, or "
        "auto (mixed_float16 on a GPU, else float32). Registered models are float32 either way. "
        "Was TRAIN_PRECISION.",
    )
    train_cache_dir: Path | None = Field(
        None,
        description="Decoded-image cache of the training worker (default: DATA_DIR/train-cache).",
    )
    train_cache_max_bytes: int = Field(
        20 * 2**30, ge=2**20, description="Size bound of the decoded-image cache (LRU eviction)."
    )
    gate_min_accuracy: float = Field(0.8, ge=0, le=1, description="Gate: accuracy floor.")
    gate_max_macro_f1_drop: float = Field(
        0.01, ge=0, le=1, description="Gate: allowed macro-F1 drop against production."
    )
    gate_max_recall_drop: float = Field(
        0.10, ge=0, le=1, description="Gate: allowed recall drop of any class."
    )
    auto_label_target_precision: float = Field(
        0.95,
        gt=0,
        le=1,
        description="The promised precision of automatic labels: each class's review threshold "
        "is set so labels above it are right this often on held-out images. Was "
        "REVIEW_PRECISION.",
    )
    audit_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of auto-accepted labels also sent to the review queue as blind "
        "audits (chosen by a hash of key, ETag and model version, not by score).",
    )
    audit_min_per_class: int = Field(
        30,
        ge=0,
        description="Audits at least this many auto-accepted labels of each class and model "
        "version, so rare classes get a precision too.",
    )
    relabel_on_promote: Literal["pending", "all", "off"] = Field(
        "pending",
        description="On a promotion, re-score the records waiting for review, every record no "
        "person reviewed, or none.",
    )


class RuntimeFields(BaseModel):
    """What serves inference on CPUs: OpenVINO and its INT8 bars."""

    runtime: Literal["auto", "tensorflow", "openvino"] = Field(
        "auto",
        description="What runs inference: auto is TensorFlow where a GPU is visible, else "
        "OpenVINO (the version's IR; TensorFlow until `labeler models optimize` made one).",
    )
    serving_format: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="Numeric format OpenVINO serves: auto is INT8 where the version's INT8 was "
        "approved, else FP32; int8 also serves FP32 when INT8 was refused. Was PRECISION.",
    )
    int8_min_agreement: float = Field(
        0.99, ge=0, le=1, description="INT8 approval: top-1 agreement with FP32 at least this."
    )
    int8_max_accuracy_drop: float = Field(
        0.005, ge=0, le=1, description="INT8 approval: accuracy drop against FP32 at most this."
    )
    int8_calibration_images: int = Field(
        300, ge=0, le=100_000, description="Images that calibrate INT8 (0: no INT8 artifact)."
    )


class MonitoringFields(BaseModel):
    """Metrics and logs."""

    metrics_port: int = Field(
        9100, ge=0, le=65535, description="Prometheus /metrics port of this process (0: off)."
    )
    log_level: str = Field(
        "INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$", description="Log level."
    )


class ReviewFields(BaseModel):
    """The review app: where it listens, who signs in, sessions and leases."""

    review_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address `labeler review` listens on. Any other than loopback needs "
        "reviewer credentials (REVIEW_USERS or REVIEW_USERS_FILE).",
    )
    review_port: int = Field(8300, ge=1, le=65535, description="Port of the review app.")
    review_users: SecretStr | None = Field(
        None,
        description="Reviewers as `name:scrypt$...` entries, comma-separated (make one with "
        "`labeler review hash-password`).",
    )
    review_users_file: Path | None = Field(
        None, description="A file of `name:scrypt$...` lines, one reviewer each."
    )
    review_secret_key: SecretStr | None = Field(
        None,
        description="Keys the review sessions kept in Redis; set it (32+ bytes: `labeler "
        "review gen-secret`) so sign-ins survive a restart and are shared by several app "
        "processes. Unset: a random key per start. Placeholders and short keys are refused.",
    )
    review_order: Literal["uncertainty", "oldest", "random"] = Field(
        "uncertainty",
        description="Next item: smallest margin first (classes take turns), the oldest, or "
        "random. After a change: `labeler review reindex`.",
    )
    review_lease_seconds: float = Field(
        120.0, gt=0, le=3600, description="How long a reviewer holds an item before it returns."
    )
    review_secure_cookies: bool = Field(
        False,
        description="Send the session cookie over HTTPS only. Unset: Secure whenever the "
        "request came over https (directly or from a trusted proxy).",
    )
    review_trusted_proxies: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses (or `*`) whose X-Forwarded-For and "
        "X-Forwarded-Proto the review app believes: your TLS proxy.",
    )
