"""BatchClassifier with a fake model over an in-memory store: records, errors, idempotency and
the overlap of fetching with inference."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from labeler.settings import Settings
from labeler.wiring import inference_limits
from monitoring.metrics import Metrics
from storage import Blob, LabelRecord, TransientStorageError
from storage.records import ErrorReason
from storage.registry import ModelMetadata
from storage.results import LabelStore
from tests.support.memory_store import MemoryStore
from workers.inference import BatchClassifier, configure_pillow

SIZE = (8, 8)
CLASSES = ["dark", "light"]


class FakeModel:
    """Says "light" with the mean red level as confidence; records each call's batch size."""

    def __init__(self, version: int = 1, batch_size: int = 4) -> None:
        self.metadata = ModelMetadata(
            name="fake", version=version, class_names=CLASSES, input_size=SIZE
        )
        self.version = version
        self.batch_size = batch_size
        self.runtime, self.serving_format = "fake", "fp32"
        self.calls: list[int] = []
        self.during_predict: threading.Event | None = None  # set by the test to block a call

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.calls.append(len(images))
        if self.during_predict is not None:
            self.during_predict.wait(timeout=10)
        light = images[..., 0].mean(axis=(1, 2)) / 255.0
        return np.stack([1 - light, light], axis=1).astype(np.float32)


class FakeRuntime:
    def __init__(self, model: FakeModel) -> None:
        self.model = model

    def current(self) -> FakeModel:
        return self.model

    def version(self, version: int) -> FakeModel:
        assert version == self.model.version
        return self.model


def png(red: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (red, 0, 0)).save(out, "PNG")
    return out.getvalue()


def put_pngs(store: MemoryStore, count: int, red: int) -> list[str]:
    keys = [f"{i:03}.png" for i in range(count)]
    for key in keys:
        store.put(key, png(red))
    return keys


@pytest.fixture
def stores() -> tuple[MemoryStore, MemoryStore]:
    configure_pillow(10**6)
    return MemoryStore(), MemoryStore()


def classifier(
    incoming: MemoryStore, labels: MemoryStore, model: FakeModel, **limits: int
) -> BatchClassifier:
    return BatchClassifier(
        incoming,
        LabelStore(labels),
        FakeRuntime(model),  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        replace(inference_limits(Settings()), **{"io_threads": 4, "decode_threads": 2, **limits}),
    )


def records(labels: MemoryStore, keys: Sequence[str]) -> dict[str, LabelRecord]:
    store = LabelStore(labels)
    found = {key: store.read(key) for key in keys}
    return {k: r for k, r in found.items() if r is not None}


def test_every_key_gets_its_own_record_once(stores: tuple[MemoryStore, MemoryStore]) -> None:
    incoming, labels = stores
    truth = {}
    for i in range(11):
        red = 250 if i % 3 == 0 else 5
        incoming.put(f"img/{i}.png", png(red))
        truth[f"img/{i}.png"] = "light" if red > 128 else "dark"
    model = FakeModel(batch_size=4)
    keys = [*truth, "img/0.png", "img/5.png"]  # repeats are labeled once

    outcome = classifier(incoming, labels, model).classify(keys, batch_id="b1")

    assert (outcome.labeled, outcome.errored, outcome.skipped) == (11, 0, 0)
    found = records(labels, list(truth))
    assert {k: r.label for k, r in found.items()} == truth
    assert all(r.batch_id == "b1" and r.model_version == 1 for r in found.values())
    assert labels.calls["put"] == 11
    assert model.calls == [4, 4, 3]  # full model batches, then the rest


def test_bad_input_becomes_error_records_and_the_rest_is_labeled(
    stores: tuple[MemoryStore, MemoryStore],
) -> None:
    incoming, labels = stores
    incoming.put("good.png", png(200))
    incoming.put("text.png", b"plain text, not an image")
    incoming.put("truncated.png", png(200)[:40])
    incoming.put("big.png", png(10) + b"\0" * 5000)
    keys = ["good.png", "text.png", "truncated.png", "big.png", "missing.png"]

    outcome = classifier(incoming, labels, FakeModel(), max_object_bytes=2000).classify(
        keys, batch_id="b"
    )

    assert (outcome.labeled, outcome.errored) == (1, 4)
    found = records(labels, keys)
    assert found["good.png"].label == "light"
    reasons = {k: r.error.reason for k, r in found.items() if r.error is not None}
    assert reasons["text.png"] == ErrorReason.NOT_AN_IMAGE
    assert reasons["big.png"] == ErrorReason.TOO_LARGE
    assert reasons["missing.png"] == ErrorReason.NOT_FOUND
    assert reasons["truncated.png"] in {ErrorReason.UNREADABLE, ErrorReason.TRUNCATED}


def test_same_etag_and_version_is_skipped_a_change_of_either_is_not(
    stores: tuple[MemoryStore, MemoryStore],
) -> None:
    incoming, labels = stores
    keys = put_pngs(incoming, 6, red=30)
    classifier(incoming, labels, FakeModel(version=1)).classify(keys, batch_id="first")
    written = {info.key: info.etag for info in labels.list()}

    again = classifier(incoming, labels, FakeModel(version=1)).classify(keys, batch_id="again")
    assert (again.labeled, again.skipped) == (0, 6)
    assert {info.key: info.etag for info in labels.list()} == written  # nothing rewritten

    incoming.put("002.png", png(240))  # re-uploaded: a new ETag
    changed = classifier(incoming, labels, FakeModel(version=1)).classify(keys, batch_id="c")
    assert (changed.labeled, changed.skipped) == (1, 5)
    assert records(labels, ["002.png"])["002.png"].label == "light"

    newer = classifier(incoming, labels, FakeModel(version=2)).classify(keys, batch_id="v2")
    assert (newer.labeled, newer.skipped) == (6, 0)
    assert {r.model_version for r in records(labels, keys).values()} == {2}


def test_records_are_written_without_waiting_and_made_durable_once_before_the_batch_returns(
    stores: tuple[MemoryStore, MemoryStore],
) -> None:
    incoming, labels = stores
    keys = put_pngs(incoming, 6, red=30)
    deferred: list[set[str]] = []
    sync = labels.sync

    def sync_and_note() -> None:
        deferred.append(set(labels.not_synced))  # what the one sync made durable
        sync()

    labels.sync = sync_and_note  # type: ignore[method-assign]
    classifier(incoming, labels, FakeModel()).classify(keys, batch_id="b")

    assert deferred == [{f"{key}.json" for key in keys}]
    assert labels.not_synced == set()


def test_a_transient_error_fails_the_batch_and_the_retry_redoes_only_what_is_missing(
    stores: tuple[MemoryStore, MemoryStore],
) -> None:
    incoming, labels = stores
    keys = put_pngs(incoming, 8, red=100)
    flaky = FlakyStore(incoming, failing="005.png")

    with pytest.raises(TransientStorageError):
        classifier(flaky, labels, FakeModel(batch_size=2)).classify(keys, batch_id="try1")  # type: ignore[arg-type]
    retry = classifier(flaky, labels, FakeModel(batch_size=2)).classify(keys, batch_id="try2")  # type: ignore[arg-type]

    assert retry.labeled >= 1
    assert retry.labeled + retry.skipped == 8
    assert set(records(labels, keys)) == set(keys)


def test_fetching_goes_on_while_the_model_runs(stores: tuple[MemoryStore, MemoryStore]) -> None:
    incoming, labels = stores
    keys = put_pngs(incoming, 40, red=60)
    model = FakeModel(batch_size=4)
    first_call_running = threading.Event()
    fetched_meanwhile = threading.Event()
    model.during_predict = fetched_meanwhile
    watched = WatchingStore(incoming, keys[-1], first_call_running, fetched_meanwhile)
    original = model.predict

    def predict(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        first_call_running.set()
        result = original(images)
        model.during_predict = None  # only the first call waits
        return result

    model.predict = predict  # type: ignore[method-assign]
    classifier(watched, labels, model, io_threads=2).classify(keys, batch_id="b")  # type: ignore[arg-type]

    # The last key was fetched while the first model call was still running: stages overlap.
    assert fetched_meanwhile.is_set()
    assert len(records(labels, keys)) == 40


class FlakyStore:
    """Fails one key's first read with a transient error, like a storage timeout."""

    def __init__(self, inner: MemoryStore, failing: str) -> None:
        self.inner, self.failing, self.failed = inner, failing, False

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        if key == self.failing and not self.failed:
            self.failed = True
            raise TransientStorageError("timeout")
        return self.inner.get(key, max_bytes=max_bytes)


class WatchingStore:
    """Sets ``seen`` when ``key`` is read while ``during`` is set; each read takes 5 ms, like a
    nearby object store, so fetching all keys takes longer than filling one model batch."""

    def __init__(
        self, inner: MemoryStore, key: str, during: threading.Event, seen: threading.Event
    ) -> None:
        self.inner, self.key, self.during, self.seen = inner, key, during, seen
        self._latency = threading.Event()  # never set: wait() is the simulated round trip

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        self._latency.wait(0.005)
        if key == self.key and self.during.is_set():
            self.seen.set()
        return self.inner.get(key, max_bytes=max_bytes)
