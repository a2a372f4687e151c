"""The review index in a real redis-server: order, filters, leases, rebuild."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from storage import LabelRecord, Review, ReviewOutcome
from testbed.waiting import wait_until
from workers.review import ReviewOrder, ReviewQueue


def record(key: str, label: str = "cat", at: float = 1.0, **extra: object) -> LabelRecord:
    values: dict[str, object] = {
        "source_key": key,
        "source_etag": f"etag-{key}",
        "model_name": "m",
        "model_version": 1,
        "label": label,
        "score": 0.4,
        "needs_review": True,
        "created_at": at,
    }
    values.update(extra)
    return LabelRecord.model_validate(values)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_oldest_first_with_class_and_prefix_filters(client: redis.Redis) -> None:
    queue = ReviewQueue(client, order="oldest")
    queue.add(record("b/2.png", "dog", at=2))
    queue.add(record("a/1.png", "cat", at=1))
    queue.add(record("a/3.png", "dog", at=3))

    assert queue.pending() == 3
    assert queue.counts() == {"cat": 1, "dog": 2}
    dog = queue.claim(label="dog")
    assert dog is not None
    assert dog.item.key == "b/2.png"
    assert dog.item.label == "dog"
    under_a = queue.claim(prefix="a/")
    assert under_a is not None
    assert under_a.item.key == "a/1.png"
    last = queue.claim()
    assert last is not None
    assert last.item.key == "a/3.png"
    assert queue.claim() is None  # all three are leased


def test_two_reviewers_never_hold_the_same_item(client: redis.Redis) -> None:
    queue = ReviewQueue(client)
    queue.add_many(record(f"k/{n:03d}.png", at=n) for n in range(100))

    def claim_all(_: int) -> list[str]:
        mine = ReviewQueue(client)  # a reviewer process of its own
        keys = []
        while (claim := mine.claim()) is not None:
            keys.append(claim.item.key)
        return keys

    with ThreadPoolExecutor(4) as pool:
        claimed = [key for keys in pool.map(claim_all, range(4)) for key in keys]

    assert sorted(claimed) == sorted(f"k/{n:03d}.png" for n in range(100))


def test_a_lease_expires_and_the_item_comes_back(client: redis.Redis) -> None:
    queue = ReviewQueue(client, lease_seconds=0.3)
    queue.add(record("x.png"))
    first = queue.claim()
    assert first is not None
    assert queue.holds("x.png", first.token)

    claims = []
    wait_until(lambda: claims.append(queue.claim()) or claims[-1], 30, "the lease to expire")
    again = claims[-1]
    assert again is not None
    assert again.item.key == "x.png"
    assert again.token != first.token
    assert not queue.holds("x.png", first.token)
    queue.release("x.png", first.token)  # the stale holder's release must not free the new lease
    assert queue.holds("x.png", again.token)


@pytest.mark.parametrize("order", ["oldest", "uncertainty", "random"])
def test_skip_sends_the_item_to_the_back(client: redis.Redis, order: ReviewOrder) -> None:
    queue = ReviewQueue(client, order=order)
    queue.add(record("old.png", at=1))
    queue.add(record("new.png", at=time.time()))
    claim = queue.claim()
    assert claim is not None
    first, other = claim.item.key, ({"old.png", "new.png"} - {claim.item.key}).pop()

    queue.skip(first, claim.token)

    after = queue.claim()
    assert after is not None
    assert after.item.key == other
    queue.skip(other, after.token)
    again = queue.claim()
    assert again is not None
    assert again.item.key == first  # skipped first, so back in front of the later skip


def test_remove_and_rebuild(client: redis.Redis) -> None:
    queue = ReviewQueue(client)
    queue.add(record("a.png"))
    queue.remove("a.png")
    queue.remove("a.png")  # twice is fine
    assert queue.pending() == 0
    assert queue.counts() == {}

    reviewed = Review(label="cat", outcome=ReviewOutcome.AGREED, reviewer="r", at=1.0)
    records = [
        record("wait.png"),
        record("sure.png", needs_review=False),
        record("done.png", review=reviewed),
        record("broken.png", label=None, error={"reason": "unreadable", "detail": "x"}),
    ]
    assert queue.rebuild(records) == 1
    assert queue.get("wait.png") is not None
    assert queue.pending() == 1


def test_a_rebuild_swaps_in_the_new_index_and_the_old_one_serves_meanwhile(
    client: redis.Redis,
) -> None:
    queue = ReviewQueue(client)
    queue.add_many([record("old-dog.png", label="dog"), record("kept.png", label="cat")])
    seen_during: list[int] = []

    def records() -> Iterator[LabelRecord]:
        for n in range(2500):  # more than one chunk
            seen_during.append(queue.pending())  # what a reviewer sees while it runs
            yield record(f"new-{n:04d}.png", label="cat", at=2.0 + n)
        yield record("kept.png", label="cat")

    assert queue.rebuild(records()) == 2501

    assert set(seen_during) == {2}  # the old queue, never an empty or half-built one
    assert queue.pending() == 2501
    assert queue.counts() == {"cat": 2501}  # the class with nothing left is gone
    assert queue.get("old-dog.png") is None
    assert {key.decode() for key in client.keys("labeler:review:rebuild:*")} == set()
    assert queue.rebuild([]) == 0
    assert queue.pending() == 0
    assert client.keys("labeler:review:*") == []


def test_a_filter_that_matches_late_scans_in_bounded_calls(client: redis.Redis) -> None:
    from workers.review.queue import SCAN_PER_CALL

    queue = ReviewQueue(client)
    others = 2 * SCAN_PER_CALL + 500
    queue.add_many(record(f"a/{n:05d}.png", at=float(n)) for n in range(others))
    queue.add(record("z/late.png", at=float(others)))
    before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    claim = queue.claim(prefix="z/")

    assert claim is not None
    assert claim.item.key == "z/late.png"
    calls = client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert calls == 3  # two full stretches, then the one that found it
    assert queue.claim(prefix="z/") is None  # leased: the walk ends at the set's end
    assert ReviewQueue(client, max_scan=100).claim(prefix="z/") is None  # and at max_scan
