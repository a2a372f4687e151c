"""Label issues in the review queue (real redis-server, local stores): a person keeps, moves or
discards a training image; nothing changes in training/ before that."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from storage import LocalStore, ReviewOutcome
from workers.review import Action, LeaseLost, ReviewDesk, ReviewQueue
from workers.training import LabelIssue


@pytest.fixture
def desk(redis_url: str, tmp_path: Path) -> Iterator[ReviewDesk]:
    client = redis.Redis.from_url(redis_url)
    training = LocalStore(tmp_path / "training")
    for key in ("3/a.png", "3/b.png", "5/c.png"):
        training.put(key, f"pixels of {key}".encode())
    yield ReviewDesk(
        LocalStore(tmp_path / "incoming"),
        LocalStore(tmp_path / "labels"),
        training,
        ReviewQueue(client),
    )
    client.close()


def _issues(*keys: str) -> list[LabelIssue]:
    return [LabelIssue(key, key.split("/")[0], "8", 0.01) for key in keys]


def test_an_issue_is_shown_with_its_folder_suggestion_and_image(desk: ReviewDesk) -> None:
    assert desk.queue.add_label_issues(_issues("3/a.png")) == 1

    item = desk.next_item()

    assert item is not None
    assert item.label_issue
    assert item.suggested == "8"
    assert item.record.label == "3"
    store, path = desk.image_source(item.record.source_key)
    assert store.get(path).data == b"pixels of 3/a.png"
    assert desk.training.exists("3/a.png")  # shown, not touched


def test_a_correction_moves_the_image_and_accept_keeps_it(desk: ReviewDesk) -> None:
    desk.queue.add_label_issues(_issues("3/a.png", "3/b.png"))

    first = desk.next_item()
    assert first is not None
    moved = desk.decide(first.record.source_key, first.claim.token, Action.CORRECT, "ana", "8")
    second = desk.next_item()
    assert second is not None
    kept = desk.decide(second.record.source_key, second.claim.token, Action.ACCEPT, "ana")

    assert moved.review is not None
    assert moved.review.outcome is ReviewOutcome.CORRECTED
    assert kept.review is not None
    assert kept.review.outcome is ReviewOutcome.AGREED
    assert desk.training.get("8/a.png").data == b"pixels of 3/a.png"
    assert not desk.training.exists("3/a.png")
    assert desk.training.exists("3/b.png")
    assert desk.queue.pending() == 0


def test_discard_takes_it_out_of_training_and_needs_the_lease(desk: ReviewDesk) -> None:
    desk.queue.add_label_issues(_issues("5/c.png"))
    item = desk.next_item()
    assert item is not None

    with pytest.raises(LeaseLost):
        desk.decide(item.record.source_key, "not-the-token", Action.DISCARD, "ana")
    assert desk.training.exists("5/c.png")
    desk.decide(item.record.source_key, item.claim.token, Action.DISCARD, "ana")

    assert not desk.training.exists("5/c.png")


def test_an_issue_whose_image_is_gone_leaves_the_queue(desk: ReviewDesk) -> None:
    desk.queue.add_label_issues(_issues("3/a.png"))
    desk.training.delete("3/a.png")

    assert desk.next_item() is None
    assert desk.queue.pending() == 0


def test_issues_have_a_lane_of_their_own_and_survive_a_reindex(redis_url: str) -> None:
    """Under the uncertainty order label issues are served at their share of what is pending
    (not after every record), and `labeler review reindex`, which reads labels/, keeps them."""
    from storage import LabelRecord, Prediction

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    queue = ReviewQueue(client, order="uncertainty")
    records = [
        LabelRecord(
            source_key=f"r/{i}.png",
            source_etag="e",
            model_name="digits",
            model_version=1,
            label=str(i % 3),
            score=0.6,
            top_k=[Prediction(label=str(i % 3), score=0.6), Prediction(label="9", score=0.3)],
            needs_review=True,
            created_at=float(i),
        )
        for i in range(90)
    ]
    queue.add_many(records)
    # Quality 0.9: by score alone every issue would come after every record (margin 0.3).
    issues = [LabelIssue(f"{i % 3}/{i}.png", str(i % 3), "8", 0.9) for i in range(10)]
    assert queue.add_label_issues(issues) == 10

    served = [queue.claim() for _ in range(20)]
    from_lane = sum(1 for claim in served if claim is not None and claim.item.label_issue)
    assert 1 <= from_lane <= 3, from_lane  # a tenth of what is pending: about 2 in 20

    assert queue.rebuild(records) == 100
    keys = set(queue.keys())
    assert len(keys) == 90  # records only: a label issue is no record to relabel
    assert not any(key.startswith("/") for key in keys)
    assert sum(1 for _ in range(100) if (c := queue.claim()) and c.item.label_issue) >= 8
    client.close()
