"""Bad input through a real deployment: moto S3 behind a byte-counting proxy, Redis, a real worker.

One corpus, generated here (see :mod:`tests.support.corpus`), is dropped into ``incoming/`` next
to good digits and submitted with ``labeler submit --wait`` as a single batch. Every object must
end with one record: the exact error reason for each broken kind, the true label for each valid
odd image, and the good digits labeled correctly. The worker's memory is read from ``/proc``
around the batch (the bombs must not cost 500 MB) and the proxy counts the bytes the worker
received for the oversized object (it must not be downloaded).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from labeler.settings import settings_from_env
from labeler.wiring import build_app
from storage import ErrorReason, LabelRecord, ObjectStore
from storage.keys import label_key
from tasks.contracts import CLASSIFY_BATCH
from testbed.digits import CLASSES
from testbed.processes import run_labeler, running_worker
from testbed.services import MotoServer, RedisServer
from tests.conftest import DigitsFixture
from tests.support.corpus import (
    ANY_LABEL,
    BOMB_SIDE,
    Case,
    confident_views,
    error_cases,
    odd_key_cases,
    valid_odd_cases,
)
from tests.support.deployment import child_pids, s3_deployment
from tests.support.s3_proxy import S3Proxy

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
MAX_OBJECT_BYTES = 2 * MIB
OVERSIZED_BYTES = 20 * MIB
MEMORY_BUDGET_KIB = 500 * 1024
PREFIX = "corpus/"
GOOD = 6
CREDENTIALS = {"s3_access_key_id": "bad-input-key", "s3_secret_access_key": "bad-input-secret"}


@dataclass
class CorpusRun:
    """What one batch of the whole corpus produced."""

    cases: list[Case]
    records: dict[str, LabelRecord]  # by source key
    label_keys: set[str]  # every record key found under labels/corpus/
    submit_output: str
    proxy: S3Proxy
    memory_before: dict[str, int]  # VmHWM and VmRSS of the prefork child, KiB
    memory_after: dict[str, int]

    def case(self, kind: str) -> Case:
        return next(c for c in self.cases if c.kind == kind)


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def _drop_corpus(incoming: ObjectStore, digits: DigitsFixture) -> list[Case]:
    """Put every case and the good digits into ``incoming/`` (straight to S3, not the proxy)."""
    views = confident_views(digits.model_path, digits.held_out, 40)
    good = [next(views) for _ in range(GOOD)]
    cases = [
        *error_cases(PREFIX + "bad/", OVERSIZED_BYTES),
        *valid_odd_cases(PREFIX + "odd/", views),
        *odd_key_cases(PREFIX + "keys/", views),
        *(
            Case(f"good digit {i}", f"{PREFIX}good/{i}.png", v.png, label=v.label)
            for i, v in enumerate(good)
        ),
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: incoming.put(c.key, c.data), cases))
    incoming.put("warm-up/0.png", good[0].png)
    return cases


@pytest.fixture(scope="module")
def corpus_run(
    redis_server: RedisServer,
    s3_server: MotoServer,
    digits: DigitsFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CorpusRun]:
    redis.Redis.from_url(redis_server.url).flushall()
    proxy = S3Proxy(s3_server.port)
    try:
        with s3_deployment(s3_server.endpoint_url, digits.model_path, name="bad-input") as site:
            env = site.env(
                redis_server.url,
                s3_endpoint_url=proxy.url,  # the worker and the CLI go through the counting proxy
                batch_max_images=128,  # the whole corpus in one batch
                inference_batch_size=8,
                max_object_bytes=MAX_OBJECT_BYTES,
                **CREDENTIALS,
            )
            cases = _drop_corpus(site.incoming, digits)  # straight to S3, not through the proxy
            log = tmp_path_factory.mktemp("bad-input") / "worker.log"
            with running_worker(env, log, "--queues", "inference") as worker:
                assert worker.process is not None
                # One small batch first: "before" is a child that has loaded the model and run
                # a batch.
                app = build_app(settings_from_env(env))
                warm = app.send_task(
                    CLASSIFY_BATCH,
                    kwargs={"payload": {"batch_id": "warm", "keys": ["warm-up/0.png"]}},
                )
                assert warm.get(timeout=120)["labeled"] == 1
                (child,) = child_pids(worker.process.pid)
                before = _memory_kib(child)

                out = run_labeler(env, "submit", PREFIX, "--wait", "--timeout", "180")

                assert child_pids(worker.process.pid) == [child], "the worker child was replaced"
                after = _memory_kib(child)
            label_keys = {info.key for info in site.labels.list(PREFIX)}
            records = {c.key: site.record(c.key) for c in cases if label_key(c.key) in label_keys}
            yield CorpusRun(cases, records, label_keys, out.stdout, proxy, before, after)
    finally:
        proxy.close()


def test_every_object_gets_exactly_one_record(corpus_run: CorpusRun) -> None:
    expected = {label_key(c.key) for c in corpus_run.cases}
    assert corpus_run.label_keys == expected
    assert all(r.source_key == k for k, r in corpus_run.records.items())
    # Only an object refused before its bytes were read has no ETag in its record.
    no_etag = {k for k, r in corpus_run.records.items() if r.source_etag is None}
    assert no_etag == {c.key for c in corpus_run.cases if c.reason == ErrorReason.TOO_LARGE}
    errors = sum(not c.labeled for c in corpus_run.cases)
    labeled = len(corpus_run.cases) - errors
    assert f"labeled {labeled}, errors {errors}, already done 0" in corpus_run.submit_output
    assert len({c.kind for c in corpus_run.cases}) >= 15


def test_each_bad_kind_gets_its_exact_reason(corpus_run: CorpusRun) -> None:
    bad = [c for c in corpus_run.cases if not c.labeled]
    got = {c.kind: corpus_run.records[c.key].error for c in bad}
    assert {kind: e.reason if e else None for kind, e in got.items()} == {
        c.kind: c.reason for c in bad
    }
    assert all(corpus_run.records[c.key].label is None for c in bad)
    assert all(e is not None and e.detail for e in got.values())


def test_valid_odd_images_get_the_label_of_the_digit_they_show(corpus_run: CorpusRun) -> None:
    odd = [c for c in corpus_run.cases if c.labeled and c.key.startswith(PREFIX + "odd/")]
    records = {c.kind: corpus_run.records[c.key] for c in odd}
    assert {kind: r.error for kind, r in records.items() if r.error} == {}
    assert {c.kind: records[c.kind].label for c in odd if c.label != ANY_LABEL} == {
        c.kind: c.label for c in odd if c.label != ANY_LABEL
    }
    assert all(records[c.kind].label in CLASSES for c in odd)
    assert all(len(r.top_k) == 5 and r.model_version == 1 for r in records.values())


def test_good_digits_in_the_same_batch_are_labeled_correctly(corpus_run: CorpusRun) -> None:
    good = [c for c in corpus_run.cases if c.key.startswith(PREFIX + "good/")]
    assert len(good) == GOOD
    assert {c.key: corpus_run.records[c.key].label for c in good} == {c.key: c.label for c in good}
    batches = {r.batch_id for r in corpus_run.records.values()}
    assert len(batches) == 1, "the corpus and the good digits were one batch"


def test_odd_keys_are_fetched_and_answered_under_the_same_key(corpus_run: CorpusRun) -> None:
    odd_keys = [c for c in corpus_run.cases if c.key.startswith(PREFIX + "keys/")]
    assert {c.key: corpus_run.records[c.key].label for c in odd_keys} == {
        c.key: c.label for c in odd_keys
    }
    assert all(corpus_run.records[c.key].source_key == c.key for c in odd_keys)


def test_decompression_bombs_are_refused_without_500_mb_of_memory(corpus_run: CorpusRun) -> None:
    bomb = corpus_run.records[corpus_run.case(f"PNG bomb {BOMB_SIDE}x{BOMB_SIDE}").key]
    assert bomb.error is not None
    assert bomb.error.reason == ErrorReason.DECOMPRESSION_BOMB
    assert f"{BOMB_SIDE * BOMB_SIDE:,}" in bomb.error.detail or "pixels" in bomb.error.detail
    # Decoding it would take 1.6 GB (Pillow keeps 1-bit images at a byte per pixel).
    peak_growth = corpus_run.memory_after["VmHWM"] - corpus_run.memory_before["VmHWM"]
    rss_growth = corpus_run.memory_after["VmRSS"] - corpus_run.memory_before["VmRSS"]
    print(f"child memory (KiB): {corpus_run.memory_before} -> {corpus_run.memory_after}")
    assert peak_growth < MEMORY_BUDGET_KIB, f"peak RSS grew {peak_growth} KiB"
    assert rss_growth < MEMORY_BUDGET_KIB, f"RSS grew {rss_growth} KiB"


def test_oversized_object_is_refused_without_downloading_it(corpus_run: CorpusRun) -> None:
    case = next(c for c in corpus_run.cases if c.reason == ErrorReason.TOO_LARGE)
    record = corpus_run.records[case.key]
    assert record.error is not None
    assert record.error.reason == ErrorReason.TOO_LARGE
    assert f"{OVERSIZED_BYTES} bytes" in record.error.detail
    gets = corpus_run.proxy.gets_of(f"incoming/{case.key}")
    assert gets, "the worker never asked for the oversized object"
    print("GETs of the oversized object:", gets)
    for get in gets:
        assert get.content_length == OVERSIZED_BYTES
        assert get.body_bytes_sent < MAX_OBJECT_BYTES, f"{get.body_bytes_sent} bytes delivered"
    # The proxy does count real downloads: a good image's body went through in full.
    good = corpus_run.cases[-1]
    (fetched,) = corpus_run.proxy.gets_of(f"incoming/{good.key}")
    assert fetched.body_bytes_sent == len(good.data)
