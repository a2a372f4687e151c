"""The composition root: Settings in, stores, engines and the Celery app out.

Everything heavy is built lazily, in the process that uses it (after Celery forks its children),
and at most once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.settings import Settings, env_name
from monitoring.metrics import Metrics
from storage import Area, ObjectStore, S3Client, make_s3_client, open_store
from storage.registry import ModelRegistry
from storage.results import LabelStore
from tasks.app import LabelerCelery, create_app
from tasks.contracts import INFERENCE_QUEUE, CeleryConfig

if TYPE_CHECKING:
    from workers.dispatch import DispatchConfig
    from workers.inference import BatchClassifier, EngineLimits, ModelRuntime, Relabeler
    from workers.review import ReviewPolicy
    from workers.training import Int8Bars, RetrainConfig, Retrainer, TrainingConfig

log = logging.getLogger(__name__)


class Stores:
    """The storage areas of one process, sharing one S3 client."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics

    @cached_property
    def _s3_client(self) -> S3Client | None:
        return make_s3_client(self.settings.s3_options()) if self.settings.uses_s3() else None

    def area(self, area: Area) -> ObjectStore:
        metrics = self.metrics
        on_retry = None
        if metrics is not None:

            def on_retry(operation: str, attempts: int) -> None:
                metrics.storage_retries.labels(operation).inc(attempts)

        store = open_store(
            self.settings.area_uri(area), s3_client=self._s3_client, on_retry=on_retry
        )
        if metrics is None:
            return store
        from workers.metered_store import MeteredStore

        return MeteredStore(store, metrics)

    def registry(self, name: str | None = None) -> ModelRegistry:
        return ModelRegistry(self.area(Area.MODELS), name or self.settings.model_name)


class ProcessEngines:
    """A worker process's engines: built on first use, after fork."""

    def __init__(
        self, settings: Settings, queues: frozenset[str], multiprocess_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.multiprocess_dir = multiprocess_dir

    @cached_property
    def metrics(self) -> Metrics:
        from prometheus_client import REGISTRY

        # In multiprocess mode samples go to files; registering in a registry would double them.
        return Metrics(None if self.multiprocess_dir else REGISTRY)

    def shutdown(self) -> None:
        """This worker process is exiting: stop counting its live gauges."""
        if self.multiprocess_dir is not None:
            from monitoring.exposition import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)

    @cached_property
    def stores(self) -> Stores:
        return Stores(self.settings, self.metrics)

    @cached_property
    def runtime(self) -> ModelRuntime:
        served: list[tuple[str, str, str]] = []

        def loaded(model: Any, int8: Any) -> None:
            name = model.metadata.name
            self.metrics.model_version.labels(name).set(model.version)
            self.metrics.model_loads.labels(name).inc()
            for labels in served:  # the previous version's runtime is no longer in service
                self.metrics.model_info.labels(*labels).set(0)
            served[:] = [(name, model.runtime, model.serving_format)]
            self.metrics.model_info.labels(*served[0]).set(1)
            if int8 is not None:
                self.metrics.int8_approved.labels(name).set(1 if int8.approved else 0)

        return model_runtime(self.settings, self.stores.registry(), on_load=loaded)

    @cached_property
    def classifier(self) -> BatchClassifier:
        from workers.inference import BatchClassifier
        from workers.review import ReviewQueue

        labels = LabelStore(self.stores.area(Area.LABELS))
        review_queue = ReviewQueue(self.redis, order=review_policy(self.settings).order)
        return BatchClassifier(
            self.stores.area(Area.INCOMING),
            labels,
            self.runtime,
            self.metrics,
            engine_limits(self.settings),
            on_needs_review=review_queue.add_many,
            select_audits=audit_sampler(self.settings, self.redis).select_many,
        )

    @cached_property
    def relabeler(self) -> Relabeler:
        from workers.inference import Relabeler
        from workers.review import ReviewQueue

        return Relabeler(
            self.stores.area(Area.INCOMING),
            self.stores.area(Area.LABELS),
            self.runtime,
            ReviewQueue(self.redis, order=review_policy(self.settings).order),
            max_object_bytes=self.settings.max_object_bytes,
            max_image_pixels=self.settings.max_image_pixels,
            on_relabeled=lambda outcome: self.metrics.relabeled.labels(outcome).inc(),
            io_threads=self.settings.io_threads,
        )

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @cached_property
    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.settings.broker_connection_url())

    @cached_property
    def retrainer(self) -> Retrainer:
        from workers.inference import configure_pillow
        from workers.review import ReviewQueue
        from workers.training import Retrainer

        configure_pillow(self.settings.max_image_pixels)
        config = retrain_config(self.settings)
        return Retrainer(
            self.stores.area(Area.TRAINING),
            self.stores.registry(),
            self.stores.area(Area.REPORTS),
            self.metrics,
            config,
            labels=self.stores.area(Area.LABELS),
            label_quality=self._label_quality,
            queue_label_issues=ReviewQueue(
                self.redis, order=review_policy(self.settings).order
            ).add_label_issues,
        )

    def _label_quality(self, version: int) -> dict[str, Any]:
        """A version's audited precision and reviewed agreement, from the Redis counters."""
        from workers.review import QualityLedger, label_quality

        return label_quality(
            QualityLedger(self.redis), version, self.settings.auto_label_target_precision
        )

    def warm_up(self) -> None:
        """Load the model before the first task arrives (if there is one to load yet)."""
        if INFERENCE_QUEUE not in self.queues:
            return
        from workers.inference import ModelUnavailable

        try:
            self.classifier.runtime.current()
        except ModelUnavailable as exc:
            log.warning("no model to warm up yet: %s", exc)


def audit_sampler(settings: Settings, redis: Any) -> Any:
    """The sampler that counts auto-accepted labels and draws blind audits from them."""
    from workers.review import AuditSampler, QualityLedger

    return AuditSampler(QualityLedger(redis), review_policy(settings))


# --- each engine's configuration, built from Settings here and nowhere else -------------------


def dispatch_config(settings: Settings) -> DispatchConfig:
    """The dispatcher's batching, reconciliation, backpressure and de-duplication window."""
    from workers.dispatch import DispatchConfig

    high, low = backlog_marks(settings)
    return DispatchConfig(
        events_list=settings.events_list,
        batch_max_images=settings.batch_max_images,
        batch_max_wait=settings.batch_max_wait_ms / 1000,
        scan_interval=reconcile_interval(settings),
        backlog_high_water=high,
        backlog_low_water=low,
        dedup_ttl=max(1, round(settings.dedup_window_hours * 3600)),
    )


def backlog_marks(settings: Settings) -> tuple[int, int]:
    """The high- and low-water marks of the backlog (low: half of high unless set)."""
    high = settings.backlog_high_water
    low = settings.backlog_low_water if settings.backlog_low_water is not None else high // 2
    return high, low


def reconcile_interval(settings: Settings) -> float:
    """LABELER_SCAN_INTERVAL_SECONDS, else hourly where events announce new objects (S3 events
    or the local watcher) and every 30 s where the scan is the only source."""
    if settings.scan_interval_seconds is not None:
        return settings.scan_interval_seconds
    events = settings.area_uri(Area.INCOMING).startswith("s3://") or settings.watch_incoming
    return 3600.0 if events else 30.0


def sqs_client(settings: Settings, *, probe: bool = False) -> Any:
    """The client for LABELER_EVENTS_SQS_URL's queue, at the endpoint and region its URL names
    (:func:`workers.dispatch.sqs_endpoint`). The dispatcher and `labeler status` both use it.

    Args:
        probe: one try with short timeouts, for a check that must stay quick when the endpoint
            is down; else the dispatcher's standard retries.
    """
    import boto3
    from botocore.config import Config

    from workers.dispatch import sqs_endpoint

    if settings.events_sqs_url is None:
        raise ValueError(f"{env_name('events_sqs_url')} is not set")
    endpoint = sqs_endpoint(
        settings.events_sqs_url, settings.events_sqs_endpoint_url, settings.s3_region
    )
    if probe:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=2,
            read_timeout=2,
        )
    else:
        # A long poll lasts up to 1 s here (see Dispatcher.step); reads get room beyond it.
        config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=30)
    options = settings.s3_options()
    return boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=endpoint.region,
    ).client("sqs", endpoint_url=endpoint.url, config=config)


def training_config(settings: Settings) -> TrainingConfig:
    """How a retrain fits: architecture and size of a first model, epochs, batch, augmentation."""
    from workers.training import TrainingConfig

    s = settings
    return TrainingConfig(
        input_size=(s.train_image_size, s.train_image_size),
        architecture=s.train_architecture,
        weights=s.train_weights,
        max_epochs=s.train_max_epochs,
        fine_tune_epochs=s.train_fine_tune_epochs,
        seed=s.train_seed,
        augmentation=s.train_augment,
        batch_size=s.train_batch_size,
        shuffle_buffer=s.train_shuffle_buffer,
        dtype_policy=s.train_dtype_policy,
    )


def retrain_config(settings: Settings) -> RetrainConfig:
    """The retrainer's configuration: fitting, the gate, thresholds, INT8 bars and the cache."""
    from workers.training import GatePolicy, RetrainConfig

    s = settings
    return RetrainConfig(
        training=training_config(s),
        gate=GatePolicy(s.gate_min_accuracy, s.gate_max_macro_f1_drop, s.gate_max_recall_drop),
        target_precision=s.auto_label_target_precision,
        max_image_pixels=s.max_image_pixels,
        int8=int8_bars(s),
        cache_dir=s.train_cache_path().resolve(),
        cache_max_bytes=s.train_cache_max_bytes,
    )


def review_policy(settings: Settings) -> ReviewPolicy:
    """Reviewers' leases, the review order and the share of automatic labels audited blind."""
    from workers.review import ReviewPolicy

    return ReviewPolicy(
        lease_seconds=settings.review_lease_seconds,
        order=settings.review_order,
        audit_rate=settings.audit_rate,
        audit_min_per_class=settings.audit_min_per_class,
    )


def int8_bars(settings: Settings) -> Int8Bars:
    """The INT8 approval bars from settings."""
    from workers.training import Int8Bars

    return Int8Bars(
        min_agreement=settings.int8_min_agreement,
        max_accuracy_drop=settings.int8_max_accuracy_drop,
        calibration_images=settings.int8_calibration_images,
    )


def model_runtime(
    settings: Settings,
    registry: ModelRegistry,
    on_load: Callable[[Any, Any], None] | None = None,
) -> ModelRuntime:
    """The model a process serves, with the configured runtime, numeric format and reload period."""
    from workers.inference import ModelRuntime

    return ModelRuntime(
        registry,
        batch_size=settings.inference_batch_size,
        reload_seconds=settings.model_reload_seconds,
        on_load=on_load,
        runtime=settings.runtime,
        serving_format=settings.serving_format,
    )


def engine_limits(settings: Settings) -> EngineLimits:
    """The batch engine's limits; also sets Pillow's pixel limit for this process."""
    from workers.inference import configure_pillow

    configure_pillow(settings.max_image_pixels)
    return inference_limits(settings)


def inference_limits(settings: Settings) -> EngineLimits:
    """The batch engine's concurrency and size limits (no side effect)."""
    from workers.inference import EngineLimits

    return EngineLimits(
        settings.io_threads,
        settings.decode_threads,
        settings.max_object_bytes,
        settings.max_image_pixels,
    )


def celery_config(settings: Settings) -> CeleryConfig:
    return CeleryConfig(
        broker_url=settings.broker_connection_url(),
        result_backend=settings.result_backend_url(),
        retrain_cron=settings.retrain_cron,
        retrain_expires=settings.retrain_expires_seconds,
        relabel_on_promote=settings.relabel_on_promote,
        visibility_timeout=settings.visibility_timeout_seconds,
        inference_visibility_timeout=settings.inference_visibility_timeout_seconds,
        inference_soft_time_limit=int(settings.inference_time_limit_seconds * 0.8),
        inference_time_limit=settings.inference_time_limit_seconds,
        inference_retry_backoff_max=settings.retry_backoff_max_seconds,
        training_soft_time_limit=int(settings.training_time_limit_seconds * 0.95),
        training_time_limit=settings.training_time_limit_seconds,
    )


def build_app(
    settings: Settings, queues: frozenset[str] = frozenset(), multiprocess_dir: Path | None = None
) -> LabelerCelery:
    """The Celery app for a producer (no queues) or a worker serving ``queues``."""
    return create_app(
        celery_config(settings), lambda: ProcessEngines(settings, queues, multiprocess_dir), queues
    )
