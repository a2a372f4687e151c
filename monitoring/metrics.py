"""Every metric labeler exports, defined once (prefix ``labeler_``).

Labels are bounded sets only: outcome, reason (a fixed enum), stage, operation, queue, task,
model name. Never keys, ids or hostnames. Gauges say how prefork children combine
(``multiprocess_mode``) so multiprocess exposition neither under- nor double-counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Per-stage and storage times: a local GET takes ~0.1 ms, an S3 GET 5-50 ms, decoding a 12 MP
# JPEG with draft ~25 ms, one inference call for 32 images ~1 s on 2 CPU cores: 0.5 ms to 60 s.
STAGE_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A batch task: 64 images at ~30 images/s is ~2 s; slow storage or a big batch, a few minutes.
BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
# Upload to label: the dispatcher's wait (0.5 s default) + queueing + a batch: seconds to minutes
# with a backlog.
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600, 1800, 3600)
# Retrains take minutes to hours.
RETRAIN_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


# The bounded label values known up front. Each is exported at 0 from the start, so a rate()
# or an alert sees the series before its first event instead of a gap.
BATCH_OUTCOMES = ("ok", "retry", "failed")
RELABEL_OUTCOMES = ("same_label", "changed_label", "left_queue")
RETRAIN_OUTCOMES = ("promoted", "refused", "failed", "skipped_locked")
GATE_DECISIONS = ("passed", "refused")
STAGES = ("fetch", "decode", "infer", "write")
STORAGE_OPERATIONS = ("get", "head", "put", "list", "delete", "sync")
EVENT_SOURCES = ("minio", "s3", "scan", "watch")
EVENT_OUTCOMES = ("queued", "duplicate", "ignored", "invalid")
FLUSH_REASONS = ("full", "timeout", "shutdown")


class Metrics:
    """The metric objects of one process. Build once per process, after fork."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._inference(registry)
        self._storage(registry)
        self._tasks(registry)
        self._model(registry)
        self._dispatch(registry)
        self._training(registry)
        self._start_at_zero()

    def _inference(self, r: CollectorRegistry | None) -> None:
        """The batch engine: images, batches, stages, confidence, latency."""
        self.images = Counter(
            "labeler_images_processed_total",
            "Input images finished, by outcome (labeled, error, skipped) and error reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.batches = Counter(
            "labeler_batches_total", "classify_batch runs, by outcome.", ["outcome"], registry=r
        )
        self.relabeled = Counter(
            "labeler_relabeled_total",
            "Records a newly promoted version re-scored, by outcome (same_label, changed_label, "
            "left_queue: it no longer waits for review).",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "labeler_batch_size_images",
            "Images per batch task.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "labeler_batch_duration_seconds",
            "Wall time of one batch task.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "labeler_stage_duration_seconds",
            "Time per stage: fetch and decode per image, infer per model call, write per record.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.last_batch_success = Gauge(
            "labeler_last_batch_success_timestamp_seconds",
            "Unix time the last batch finished.",
            multiprocess_mode="max",
            registry=r,
        )
        self.confidence = Histogram(
            "labeler_prediction_confidence",
            "Top-1 score of each label.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.upload_to_label_seconds = Histogram(
            "labeler_upload_to_label_seconds",
            "From the object's last-modified time to its label being written.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _storage(self, r: CollectorRegistry | None) -> None:
        """Object store calls: durations, errors, the client's own retries."""
        self.storage_seconds = Histogram(
            "labeler_storage_request_duration_seconds",
            "Object store calls, by operation.",
            ["operation"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter(
            "labeler_storage_errors_total",
            "Object store calls that failed, by operation and error class.",
            ["operation", "error"],
            registry=r,
        )
        self.storage_retries = Counter(
            "labeler_storage_retries_total",
            "Requests the S3 client retried by itself (throttling, 5xx, connection errors).",
            ["operation"],
            registry=r,
        )

    def _tasks(self, r: CollectorRegistry | None) -> None:
        """Celery tasks: running, refused, retried."""
        self.tasks_in_progress = Gauge(
            "labeler_tasks_in_progress",
            "Tasks running now.",
            ["task"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tasks_rejected = Counter(
            "labeler_tasks_rejected_total",
            "Task messages refused without retry (e.g. a payload that does not validate).",
            ["task", "reason"],
            registry=r,
        )
        self.task_retries = Counter(
            "labeler_task_retries_total",
            "Task retries, by task and error class.",
            ["task", "error"],
            registry=r,
        )

    def _model(self, r: CollectorRegistry | None) -> None:
        """The served model: version, loads, runtime and precision, INT8 approval."""
        self.model_version = Gauge(
            "labeler_model_version",
            "Model version this process serves.",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.model_loads = Counter(
            "labeler_model_loads_total",
            "Model versions loaded (start-up and hot swaps).",
            ["model"],
            registry=r,
        )
        # 1 for the (runtime, precision) a live process serves, 0 once it swapped away from it.
        self.model_info = Gauge(
            "labeler_model_info",
            "What computes the labels: runtime and numeric format (fp32, int8) in service.",
            ["model", "runtime", "serving_format"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.int8_approved = Gauge(
            "labeler_model_int8_approved",
            "1 when the served version's INT8 artifact passed its bars, 0 when it was refused "
            "(and FP32 serves instead).",
            ["model"],
            multiprocess_mode="livemin",
            registry=r,
        )

    def _dispatch(self, r: CollectorRegistry | None) -> None:
        """Queues (sampled from Redis by every worker's and the dispatcher's exporter) and the
        dispatcher's intake."""
        self.queue_depth = Gauge(
            "labeler_queue_depth",
            "Messages per queue: waiting in the list, or reserved by a worker and not yet acked.",
            ["queue", "state"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.events = Counter(
            "labeler_events_total",
            "Object events seen by the dispatcher, by source (minio, s3, scan) and outcome "
            "(queued, duplicate, ignored).",
            ["source", "outcome"],
            registry=r,
        )
        self.dispatched_batches = Counter(
            "labeler_dispatched_batches_total",
            "classify_batch tasks sent by the dispatcher.",
            ["reason"],
            registry=r,
        )
        self.dispatcher_paused = Gauge(
            "labeler_dispatcher_paused",
            "1 while intake is paused because the inference backlog is above the high-water mark.",
            multiprocess_mode="max",
            registry=r,
        )

    def _training(self, r: CollectorRegistry | None) -> None:
        """Retraining: runs, duration, evaluation figures, gate decisions."""
        self.retrains = Counter(
            "labeler_retrains_total",
            "Retrain runs by outcome (promoted, refused, failed, skipped_locked).",
            ["outcome"],
            registry=r,
        )
        self.retrain_seconds = Histogram(
            "labeler_retrain_duration_seconds",
            "Wall time of a retrain run.",
            buckets=RETRAIN_BUCKETS,
            registry=r,
        )
        self.last_retrain_success = Gauge(
            "labeler_last_retrain_success_timestamp_seconds",
            "Unix time the last retrain finished without error (promoted or refused).",
            multiprocess_mode="max",
            registry=r,
        )
        self.evaluation = Gauge(
            "labeler_evaluation_score",
            "Figures of the last evaluated candidate on the test split (accuracy, macro_f1, "
            "weighted_f1).",
            ["model", "metric"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.gate_decisions = Counter(
            "labeler_gate_decisions_total",
            "Promotion gate decisions (passed, refused).",
            ["decision"],
            registry=r,
        )

    def _start_at_zero(self) -> None:
        self.images.labels("labeled", "")
        self.images.labels("skipped", "")
        for outcome in BATCH_OUTCOMES:
            self.batches.labels(outcome)
        for outcome in RELABEL_OUTCOMES:
            self.relabeled.labels(outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for operation in STORAGE_OPERATIONS:
            self.storage_seconds.labels(operation)
            self.storage_retries.labels(operation)
        for outcome in RETRAIN_OUTCOMES:
            self.retrains.labels(outcome)
        for decision in GATE_DECISIONS:
            self.gate_decisions.labels(decision)
        for source in EVENT_SOURCES:
            for outcome in EVENT_OUTCOMES:
                self.events.labels(source, outcome)
        for reason in FLUSH_REASONS:
            self.dispatched_batches.labels(reason)


class SupervisorMetrics:
    """The metrics of `labeler up`'s supervisor process: what its supervision did."""

    def __init__(self, registry: CollectorRegistry, components: list[str]) -> None:
        self.component_restarts = Counter(
            "labeler_component_restarts_total",
            "Restarts of a `labeler up` component (or its private Redis) after it exited.",
            ["component"],
            registry=registry,
        )
        for name in components:  # the supervisor's fixed component list: a bounded set
            self.component_restarts.labels(name)


REVIEW_OUTCOMES = ("agreed", "corrected", "discarded")


class ReviewMetrics:
    """The review app's metrics (served by the app itself on ``/metrics``).

    ``pending`` and ``agreement`` are read from the review index (shared by every app process)
    at scrape time; ``reviews`` counts this process's decisions.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.pending = Gauge(
            "labeler_review_pending",
            "Records waiting for a reviewer (the review index)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.reviews = Counter(
            "labeler_reviews",
            "First decisions on items by reviewers, by outcome",
            ["outcome"],
            registry=registry,
        )
        # Not the precision of automatic labels: reviewed items are the low-confidence ones.
        self.agreement = Gauge(
            "labeler_review_agreement_ratio",
            "Share of reviewed low-confidence items whose predicted label reviewers agreed with: "
            "agreed / (agreed + corrected), per predicted class (classes of the model)",
            ["label"],
            registry=registry,
            multiprocess_mode="max",
        )
        for outcome in REVIEW_OUTCOMES:
            self.reviews.labels(outcome)


AUDIT_OUTCOMES = REVIEW_OUTCOMES
OVERALL = "_overall"  # the `label` of all classes together (no class name starts with "_")


class AuditMetrics:
    """Label-quality series, read at scrape time from counters every process shares.

    ``read`` returns the ``label_quality`` object of the production version (see
    ``workers.review.quality``); the series say the same thing as ``labeler status``.
    """

    def __init__(self, registry: CollectorRegistry, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read
        # The families this collector yields and their label names (checked against the alerts).
        self.label_names = {
            "labeler_auto_label_precision": {"label", "bound", "model_version"},
            "labeler_audits": {"label", "outcome", "model_version"},
            "labeler_auto_label_precision_target": set[str](),
        }
        registry.register(self)

    def describe(self) -> list[Any]:
        return []  # the label sets are known only at scrape time

    def collect(self) -> Iterator[Any]:
        quality = self._read()
        auto = quality.get("auto", {})
        version = str(quality.get("model_version", ""))
        precision = GaugeMetricFamily(
            "labeler_auto_label_precision",
            "Precision of automatic (auto-accepted) labels of the production version, measured "
            "by blind audits: point estimate and 95% Wilson bounds, per predicted class "
            f'(label="{OVERALL}": all classes, weighted by their share of auto-accepted labels)',
            labels=["label", "bound", "model_version"],
        )
        audits = CounterMetricFamily(
            "labeler_audits",
            "First decisions on blind audits of the production version, by predicted class "
            "and outcome",
            labels=["label", "outcome", "model_version"],
        )
        target = GaugeMetricFamily(
            "labeler_auto_label_precision_target",
            "The precision automatic labels are calibrated to "
            "(LABELER_AUTO_LABEL_TARGET_PRECISION)",
        )
        target.add_metric([], float(quality.get("target", 0.0)))
        rows = [(OVERALL, auto), *auto.get("by_class", {}).items()]
        for label, entry in rows:
            for bound, name in (("point", "precision"), ("low", "low"), ("high", "high")):
                if entry.get(name) is not None:
                    precision.add_metric([label, bound, version], float(entry[name]))
        for label, entry in auto.get("by_class", {}).items():
            counts = entry.get("outcomes", {})
            for outcome in AUDIT_OUTCOMES:
                audits.add_metric([label, outcome, version], float(counts.get(outcome, 0)))
        yield from (precision, audits, target)
