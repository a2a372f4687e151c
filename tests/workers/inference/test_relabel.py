"""The relabel engine over local stores and the review queue in a real redis-server, with a stub
model whose scores the test chooses."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import redis
from PIL import Image

from storage import LabelRecord, LocalStore, Prediction, Review, ReviewOutcome, label_key
from storage.registry import ModelMetadata
from workers.inference import Relabeler
from workers.review import ReviewQueue

CLASSES = ["cat", "dog", "owl"]


class StubModel:
    """Version ``version`` answering ``answers[n]`` for the n-th image of each predict call."""

    runtime, serving_format, batch_size = "tensorflow", "fp32", 8

    def __init__(self, version: int, answers: list[list[float]], threshold: float = 0.5) -> None:
        self.metadata = ModelMetadata(
            name="m",
            version=version,
            class_names=CLASSES,
            input_size=(8, 8),
            review_threshold=threshold,
        )
        self.answers = answers
        self.before_answer: Callable[[], None] = lambda: None  # lets a test race a writer

    @property
    def version(self) -> int:
        return self.metadata.version

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.before_answer()
        return np.array(self.answers[: len(images)], dtype=np.float32)

    def loaded(self, version: int) -> StubModel:
        assert version == self.version
        return self


class Models:
    def __init__(self, model: StubModel) -> None:
        self.model = model

    def version(self, version: int) -> StubModel:
        return self.model.loaded(version)


def png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(out, format="PNG")
    return out.getvalue()


class Site:
    def __init__(self, root: Path, client: redis.Redis) -> None:
        self.incoming = LocalStore(root / "incoming")
        self.labels = LocalStore(root / "labels")
        self.queue = ReviewQueue(client)

    def seed(self, key: str, label: str = "cat", score: float = 0.4, **extra: object) -> None:
        etag = self.incoming.put(key, png(len(key))).etag
        top = [Prediction(label=label, score=score), Prediction(label="dog", score=0.3)]
        values: dict[str, object] = {
            "source_key": key,
            "source_etag": etag,
            "model_name": "m",
            "model_version": 1,
            "label": label,
            "score": score,
            "top_k": top,
            "needs_review": score < 0.5,
            "created_at": 100.0,
        }
        record = LabelRecord.model_validate(values | extra)
        self.labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())
        if record.waits_for_review:
            self.queue.add(record)

    def record(self, key: str) -> LabelRecord:
        return LabelRecord.model_validate_json(self.labels.get(label_key(key)).data)


@pytest.fixture
def site(tmp_path: Path, redis_url: str) -> Iterator[Site]:
    client = redis.Redis.from_url(redis_url)
    yield Site(tmp_path, client)
    client.flushdb()
    client.close()


def relabeler(site: Site, model: StubModel, seen: list[str]) -> Relabeler:
    return Relabeler(
        site.incoming,
        site.labels,
        Models(model),
        site.queue,
        max_object_bytes=1 << 20,
        max_image_pixels=1 << 20,
        on_relabeled=seen.append,
    )


def test_rescored_records_keep_history_and_the_queue_follows(site: Site) -> None:
    site.seed("a.png")  # v2 is sure it is a cat: leaves the queue
    site.seed("b.png")  # v2 says owl, still unsure: stays, under its new class
    site.seed("c.png")  # v2 agrees and is still unsure
    reviewed = Review(label="cat", outcome=ReviewOutcome.AGREED, reviewer="ana", at=5.0)
    site.seed("d.png", review=reviewed)  # a person decided: never touched
    site.seed("e.png", score=0.9)  # auto-accepted: only with pending_only=False
    v2 = StubModel(2, [[0.95, 0.03, 0.02], [0.2, 0.35, 0.45], [0.45, 0.4, 0.15], [0.1, 0.8, 0.1]])
    seen: list[str] = []
    engine = relabeler(site, v2, seen)

    keys = sorted(engine.keys())
    outcome = engine.relabel([*keys, "d.png", "e.png"], 2)

    assert keys == ["a.png", "b.png", "c.png"]
    assert outcome.as_dict() == {
        "same_label": 1,
        "changed_label": 1,
        "left_queue": 1,
        "skipped": 2,
    }
    assert Counter(seen) == {"left_queue": 1, "changed_label": 1, "same_label": 1}
    a, b = site.record("a.png"), site.record("b.png")
    assert (a.model_version, a.label, a.needs_review) == (2, "cat", False)
    assert [(h.label, h.score, h.model_version, h.at) for h in a.history or []] == [
        ("cat", 0.4, 1, 100.0)
    ]
    assert (b.label, b.needs_review) == ("owl", True)
    assert site.record("d.png").model_version == 1
    assert site.record("d.png").history is None
    assert site.record("e.png").model_version == 1
    assert sorted(site.queue.keys()) == ["b.png", "c.png"]
    assert site.queue.counts() == {"cat": 1, "owl": 1}  # b moved from cat to owl

    again = engine.relabel(["b.png", "c.png"], 2)  # a repeat (a re-delivered task)
    assert again.as_dict()["skipped"] == 2

    everything = relabeler(site, StubModel(3, [[0.1, 0.85, 0.05]] * 5), [])
    done = everything.relabel(sorted(everything.keys(pending_only=False)), 3, pending_only=False)
    assert done.as_dict()["skipped"] == 1  # d.png, the reviewed one
    e = site.record("e.png")
    assert (e.model_version, e.label, len(e.history or [])) == (3, "dog", 1)
    assert [h.model_version for h in site.record("a.png").history or []] == [1, 2]


def test_a_fresh_upload_racing_the_relabel_wins(site: Site) -> None:
    site.seed("race.png")
    site.seed("changed.png")
    site.incoming.put("changed.png", png(1))  # a new image: labeled afresh by its upload
    v2 = StubModel(2, [[0.9, 0.05, 0.05]])
    newer = LabelRecord(
        source_key="race.png",
        source_etag="new-etag",
        model_name="m",
        model_version=2,
        label="owl",
        score=0.99,
        needs_review=False,
        created_at=time.time(),
    )

    def fresh_upload_lands() -> None:  # after the relabel read the record, before it writes
        site.labels.put(label_key("race.png"), newer.model_dump_json(exclude_none=True).encode())

    v2.before_answer = fresh_upload_lands
    outcome = relabeler(site, v2, []).relabel(["race.png", "changed.png"], 2)

    assert outcome.as_dict()["skipped"] == 2
    assert site.record("race.png") == newer
    assert site.record("changed.png").model_version == 1
