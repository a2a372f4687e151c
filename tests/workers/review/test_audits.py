"""Audit sampling and label-quality counters against a real redis-server: the batch engine
draws audits, the queue serves them, decisions count once, and the counts survive a reindex."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from labeler.settings import Settings
from labeler.wiring import inference_limits
from monitoring.metrics import Metrics
from storage import LabelRecord, LocalStore, ReviewOutcome, label_key
from storage.results import LabelStore
from tests.support.memory_store import MemoryStore
from tests.unit.workers.inference.test_batch import FakeModel, FakeRuntime, png
from workers.inference import BatchClassifier, configure_pillow
from workers.review import (
    Action,
    AuditSampler,
    QualityLedger,
    ReviewDesk,
    ReviewPolicy,
    ReviewQueue,
    audit_fraction,
    label_quality,
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def record(key: str, label: str = "cat", version: int = 1, **extra: object) -> LabelRecord:
    values: dict[str, object] = {
        "source_key": key,
        "source_etag": f"etag-{key}",
        "model_name": "m",
        "model_version": version,
        "label": label,
        "score": 0.99,
        "created_at": 1.0,
        **extra,
    }
    return LabelRecord(**values)  # type: ignore[arg-type]


def test_a_label_counts_once_and_keeps_its_ordinal(client: redis.Redis) -> None:
    ledger = QualityLedger(client)
    assert [ledger.count_label(record(f"{i}.png")) for i in range(3)] == [1, 2, 3]
    assert ledger.count_label(record("1.png")) == 2  # written twice: same answer, no count
    assert ledger.count_label(record("1.png", version=2)) == 1  # a new version counts anew
    assert ledger.counts(1).auto == {"cat": 3}
    assert ledger.versions() == [1, 2]


def test_the_floor_then_the_rate_select_audits_independently_of_score(
    client: redis.Redis,
) -> None:
    sampler = AuditSampler(
        QualityLedger(client),
        ReviewPolicy(lease_seconds=60, order="uncertainty", audit_rate=0.1, audit_min_per_class=5),
    )
    picked = {}
    for i in range(2000):
        r = record(
            f"k{i}.png", label="rare" if i % 100 == 0 else "common", score=0.5 + i % 50 / 100
        )
        picked[r.source_key] = (r, sampler.select(r))
    rare = [k for k, (r, chosen) in picked.items() if r.label == "rare" and chosen]
    common = [(r, chosen) for r, chosen in picked.values() if r.label == "common"]
    assert len(rare) >= 5  # the floor: every one of the first 5 rare labels
    drawn = [r for r, chosen in common[5:] if chosen]
    assert all(audit_fraction(r.source_key, r.source_etag, 1) < 0.1 for r in drawn)
    assert 0.07 < len(drawn) / len(common[5:]) < 0.13
    assert all(chosen for _, chosen in common[:5])
    again = [sampler.select(r) for r, _ in picked.values()]  # reproducible
    assert again == [chosen for _, chosen in picked.values()]
    assert not sampler.select(record("low.png", needs_review=True))  # not auto-accepted


def test_the_batch_engine_marks_and_queues_audits(client: redis.Redis) -> None:
    configure_pillow(10**6)
    incoming, labels = MemoryStore(), MemoryStore()
    for i in range(12):
        incoming.put(f"{i}.png", png(250 if i < 8 else 150))  # 8 confident, 4 under threshold
    queue = ReviewQueue(client)
    sampler = AuditSampler(
        QualityLedger(client),
        ReviewPolicy(lease_seconds=60, order="uncertainty", audit_rate=0.0, audit_min_per_class=3),
    )
    engine = BatchClassifier(
        incoming,
        LabelStore(labels),
        FakeRuntime(model := FakeModel()),  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        replace(inference_limits(Settings()), io_threads=4, decode_threads=2),
        on_needs_review=queue.add_many,
        select_audits=sampler.select_many,
    )
    model.metadata = model.metadata.model_copy(update={"review_threshold": 0.7})
    keys = [f"{i}.png" for i in range(12)]
    engine.classify(keys, batch_id="b")
    engine.classify(keys, batch_id="b")  # a retried batch: nothing counts twice
    engine.close()

    written = [LabelStore(labels).read(k) for k in keys]
    audits = [r for r in written if r is not None and r.audit]
    assert len(audits) == 3
    assert all(not r.needs_review for r in audits)
    assert queue.pending() == 3 + 4  # audits and low-confidence items share the queue
    assert QualityLedger(client).counts(1).auto == {"light": 8}
    raw = labels.get(label_key(keys[11])).data
    assert b'"audit"' not in raw  # records that are not audits do not carry the field


def test_decisions_count_once_apart_by_kind_and_survive_a_reindex(
    client: redis.Redis, tmp_path: Path
) -> None:
    incoming, labels, training = (LocalStore(tmp_path / n) for n in ("in", "labels", "train"))
    queue, ledger = ReviewQueue(client), QualityLedger(client)
    desk = ReviewDesk(incoming, labels, training, queue, ledger=ledger)
    seeded = []
    for i, (label, audit) in enumerate([("cat", True), ("cat", True), ("dog", None)]):
        etag = incoming.put(f"{i}.png", png(200)).etag
        r = record(f"{i}.png", label, source_etag=etag, audit=audit, needs_review=not audit)
        labels.put(label_key(r.source_key), r.model_dump_json(exclude_none=True).encode())
        if audit:
            ledger.count_label(r)
        seeded.append(r)
    assert queue.rebuild(seeded) == 3  # reindex rebuilds audit items too

    answers = {"0.png": "cat", "1.png": "dog", "2.png": "dog"}
    while (item := desk.next_item()) is not None:
        key = item.record.source_key
        desk.decide(key, item.claim.token, Action.CORRECT, "ana", label=answers[key])
        desk.decide(key, item.claim.token, Action.CORRECT, "ana", label=answers[key])  # retry
    assert ledger.count_decision(seeded[0], ReviewOutcome.AGREED) is False  # counted already

    counts = ledger.counts(1)
    assert counts.decisions["audit"] == {"cat": {"agreed": 1, "corrected": 1}}
    assert counts.decisions["reviewed"] == {"dog": {"agreed": 1}}
    assert queue.tallies() == {"dog": {"agreed": 1}}  # the old tally: low-confidence only
    assert training.get("dog/1.png").data  # audits feed training like any review

    assert (
        queue.rebuild(
            LabelRecord.model_validate_json(labels.get(i.key).data) for i in labels.list()
        )
        == 0
    )
    quality = label_quality(ledger, 1, 0.95)
    assert quality["auto"]["audited"] == 2
    assert quality["auto"]["precision"] == 0.5
    assert quality["reviewed"]["agreement"] == 1.0
