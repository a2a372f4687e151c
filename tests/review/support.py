"""A review app over a real redis-server and a local store, for in-process handler tests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import redis
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest

from labeler.settings import Settings
from monitoring.metrics import AuditMetrics, ReviewMetrics
from review import ReviewConfig, Reviewers, create_app
from storage import LabelRecord, LocalStore, Prediction, label_key
from workers.review import QualityLedger, ReviewDesk, ReviewQueue, label_quality

CLASSES = ["cat", "dog", "fox"]


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


@dataclass
class ReviewSetup:
    incoming: LocalStore
    labels: LocalStore
    training: LocalStore
    queue: ReviewQueue
    desk: ReviewDesk
    metrics: ReviewMetrics
    registry: CollectorRegistry
    ledger: QualityLedger

    @classmethod
    def build(cls, root: Path, redis_url: str) -> ReviewSetup:
        incoming = LocalStore(root / "incoming")
        labels = LocalStore(root / "labels")
        training = LocalStore(root / "training")
        queue = ReviewQueue(redis.Redis.from_url(redis_url), lease_seconds=60)
        registry = CollectorRegistry()
        metrics = ReviewMetrics(registry)

        def decided(predicted: str, outcome: object) -> None:
            metrics.reviews.labels(str(outcome)).inc()

        ledger = QualityLedger(redis.Redis.from_url(redis_url))
        desk = ReviewDesk(incoming, labels, training, queue, on_decided=decided, ledger=ledger)
        setup = cls(incoming, labels, training, queue, desk, metrics, registry, ledger)
        AuditMetrics(registry, setup.label_quality)
        return setup

    def label_quality(self) -> dict[str, object]:
        return label_quality(self.ledger, 3, 0.95)

    def app(self, reviewers: Reviewers | None = None) -> object:
        def exposition() -> bytes:
            self.metrics.pending.set(self.queue.pending())
            return generate_latest(self.registry)

        config = ReviewConfig(
            reviewers=reviewers or Reviewers({}),
            secret_key="test-secret",
            classes=lambda: list(CLASSES),
            max_pixels=Settings().max_image_pixels,
            metrics=exposition,
            label_quality=self.label_quality,
        )
        return create_app(self.desk, config)

    def seed(
        self,
        key: str,
        data: bytes | None = None,
        label: str = "cat",
        at: float = 1.0,
        audit: bool = False,
    ) -> None:
        etag = self.incoming.put(key, data if data is not None else png()).etag
        record = LabelRecord(
            source_key=key,
            source_etag=etag,
            model_name="digits",
            model_version=3,
            label=label,
            score=0.41,
            top_k=[Prediction(label=label, score=0.41), Prediction(label="dog", score=0.33)],
            needs_review=not audit,
            created_at=at,
            audit=audit or None,
        )
        if audit:
            self.ledger.count_label(record)
        self.labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())
        self.queue.add(record)

    def record(self, key: str) -> LabelRecord:
        return LabelRecord.model_validate_json(self.labels.get(label_key(key)).data)
