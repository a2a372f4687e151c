"""Relabel on promotion end to end: an unsure v1 leaves digits waiting for review; promoting a
confident v2 empties the queue of what v2 labels confidently, in the background, with history
kept and a person's reviews untouched. Then `labeler relabel` by hand.

A real `labeler worker --queues inference,relabel`, a real redis-server, the local store. v1 and
v2 share the digits weights; v1's review threshold (1.0) makes it unsure of nearly everything.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from labeler.settings import settings_from_env
from labeler.wiring import Stores
from storage import Area, LabelRecord, LocalStore
from storage.keys import label_key
from testbed.digits import CLASSES
from testbed.processes import labeler_env, run_labeler, running_worker
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from workers.review import Action, ReviewDesk, ReviewQueue

pytestmark = pytest.mark.slow
IMAGES = 60
PROMOTION_DEADLINE = 120.0  # the bar: the queue empties within two minutes


def _import(env: dict[str, str], digits: DigitsFixture, threshold: float, *extra: str) -> str:
    args = ["models", "import", str(digits.model_path), "--classes", ",".join(CLASSES)]
    return run_labeler(env, *args, "--review-threshold", str(threshold), *extra).stdout


def test_promotion_relabels_the_waiting_records(
    tmp_path: Path, redis_url: str, digits: DigitsFixture
) -> None:
    env = labeler_env(
        data_dir=tmp_path / "data", broker_url=redis_url, model_reload_seconds=0.5, audit_rate=0
    )
    stores = Stores(settings_from_env(env))
    incoming, labels = stores.area(Area.INCOMING), stores.area(Area.LABELS)
    keys = [f"new/{n:03d}.png" for n in range(IMAGES)]
    for key, sample in zip(keys, digits.held_out, strict=False):
        incoming.put(key, sample.data)
    client = redis.Redis.from_url(redis_url)
    queue = ReviewQueue(client)

    def record(key: str) -> LabelRecord:
        return LabelRecord.model_validate_json(labels.get(label_key(key)).data)

    with running_worker(env, tmp_path / "worker.log", "--queues", "inference,relabel"):
        _import(env, digits, 1.0)
        run_labeler(env, "submit", "new/", "--wait", "--timeout", "300", timeout=400)
        waiting = {k for k in keys if record(k).waits_for_review}
        assert len(waiting) >= IMAGES * 0.8, "v1 is unsure of nearly everything"
        assert queue.pending() == len(waiting)
        desk = ReviewDesk(incoming, labels, LocalStore(tmp_path / "training"), queue)
        reviewed = []
        for _ in range(3):  # a person decides three items under v1
            item = desk.next_item()
            assert item is not None
            desk.decide(item.record.source_key, item.claim.token, Action.ACCEPT, "ana")
            reviewed.append(item.record.source_key)
        before = {k: labels.head(label_key(k)).etag for k in reviewed}

        started = time.monotonic()  # the import promotes at its end: an upper bound
        out = _import(env, digits, 0.5)  # v2: the same weights, sure above 0.5
        assert "queued re-scoring of the pending records with v2" in out

        rescored = set(waiting) - set(reviewed)
        wait_until(
            lambda: all(record(k).model_version == 2 for k in rescored),
            PROMOTION_DEADLINE,
            "v2 to re-score every waiting record",
        )
        elapsed = time.monotonic() - started
        print(f"v2 re-scored {len(rescored)} waiting records {elapsed:.1f} s from its import")
        unsure = {k for k in rescored if record(k).needs_review}
        wait_until(lambda: set(queue.keys()) == unsure, 10, "the queue to hold v2's unsure ones")

        # By hand, every record no person reviewed, with a version not (yet) in production.
        _import(env, digits, 0.5, "--no-promote")
        by_hand = run_labeler(env, "relabel", "new/", "--model-version", "3", "--wait").stdout

    assert elapsed < PROMOTION_DEADLINE
    assert len(unsure) < len(rescored) / 2, "v2 is sure of most digits"
    for key in rescored:
        history = record(key).history or []
        assert [h.model_version for h in history] == [1, 2]  # v1's, then v2's (v3 is current)
    assert {k: labels.head(label_key(k)).etag for k in reviewed} == before  # never rewritten
    assert all(record(k).model_version == 1 and record(k).review for k in reviewed)
    assert f"queued {IMAGES} records" in by_hand
    assert "skipped 3" in by_hand  # the reviewed ones
    assert all(record(k).model_version == 3 for k in set(keys) - set(reviewed))
