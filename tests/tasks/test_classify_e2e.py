"""classify_batch end to end: real Redis, the moto S3 server, a real `labeler worker` process."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from PIL import Image

from labeler.settings import settings_from_env
from labeler.wiring import build_app
from storage import ErrorReason
from storage.keys import label_key
from tasks.app import LabelerCelery
from tasks.contracts import CLASSIFY_BATCH
from testbed.digits import CLASSES
from testbed.processes import WorkerProcess, run_labeler
from testbed.services import MotoServer, RedisServer
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.support.deployment import S3Deployment, s3_deployment

pytestmark = pytest.mark.slow


@dataclass
class Deployment:
    """A bucket on the moto server, the environment of every process on it, one worker."""

    site: S3Deployment
    env: dict[str, str]
    app: LabelerCelery
    worker: WorkerProcess


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer,
    s3_server: MotoServer,
    digits: DigitsFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    redis.Redis.from_url(redis_server.url).flushall()
    with s3_deployment(s3_server.endpoint_url, None, name="e2e") as site:
        env = site.env(
            redis_server.url, model_reload_seconds=0.5, batch_max_images=16, inference_batch_size=8
        )
        run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = WorkerProcess(env, log, "--queues", "inference").start()
        try:
            yield Deployment(site, env, build_app(settings_from_env(env)), worker)
        finally:
            worker.stop()


def test_300_digits_are_labeled_accurately(deployment: Deployment, digits: DigitsFixture) -> None:
    truth = {}
    for i, sample in enumerate(digits.held_out):
        key = f"held-out/{i:03d}.png"
        deployment.site.incoming.put(key, sample.data, content_type="image/png")
        truth[key] = sample.label

    out = run_labeler(deployment.env, "submit", "held-out/", "--wait", "--timeout", "600")

    records = deployment.site.records(list(truth))
    assert len(records) == 300, out.stdout
    assert all(r.error is None and r.model_version == 1 for r in records.values())
    accuracy = sum(records[k].label == truth[k] for k in truth) / len(truth)
    assert accuracy >= 0.95
    assert all(r.source_etag and r.top_k[0].label == r.label for r in records.values())
    assert "labeled 300, errors 0" in out.stdout


def test_bad_inputs_get_reasons_and_good_ones_labels(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    good = {f"mixed/good-{i}.png": s for i, s in enumerate(digits.held_out[:6])}
    for key, sample in good.items():
        deployment.site.incoming.put(key, sample.data)
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(cmyk, "JPEG")
    valid_jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(valid_jpeg, "JPEG")
    bad = {
        "mixed/corrupt.jpg": valid_jpeg.getvalue()[:200],
        "mixed/text.jpg": b"this is not an image, just text named .jpg\n",
        "mixed/empty.jpg": b"",
    }
    for key, data in bad.items():
        deployment.site.incoming.put(key, data)
    deployment.site.incoming.put("mixed/cmyk.jpg", cmyk.getvalue())

    run_labeler(deployment.env, "submit", "mixed/", "--wait", "--timeout", "300")

    records = deployment.site.records([*good, *bad, "mixed/cmyk.jpg"])
    assert len(records) == len(good) + len(bad) + 1
    assert {k: r.error.reason for k, r in records.items() if r.error} == {
        "mixed/corrupt.jpg": ErrorReason.TRUNCATED,
        "mixed/text.jpg": ErrorReason.NOT_AN_IMAGE,
        "mixed/empty.jpg": ErrorReason.EMPTY,
    }
    assert all(records[k].label == s.label for k, s in good.items())
    assert records["mixed/cmyk.jpg"].label in CLASSES  # a valid odd-mode image gets a label


def test_resubmitting_rewrites_nothing(deployment: Deployment, digits: DigitsFixture) -> None:
    keys = [f"again/{i}.png" for i in range(10)]
    for key, sample in zip(keys, digits.held_out, strict=False):
        deployment.site.incoming.put(key, sample.data)
    run_labeler(deployment.env, "submit", "again/", "--wait")
    before = {k: deployment.site.labels.head(label_key(k)) for k in keys}

    out = run_labeler(deployment.env, "submit", "again/", "--wait")

    assert "labeled 0, errors 0, already done 10" in out.stdout
    assert {k: deployment.site.labels.head(label_key(k)) for k in keys} == before


def test_invalid_payload_is_rejected_once_with_a_clear_error(deployment: Deployment) -> None:
    result = deployment.app.send_task(
        CLASSIFY_BATCH, kwargs={"payload": {"batch_id": "x", "keys": ["../etc/passwd"]}}
    )
    with pytest.raises(Exception, match="ClassifyBatchRequest: keys: Value error"):
        result.get(timeout=60)
    assert result.state == "FAILURE"
    assert "rejected labeler.classify_batch message, not retried" in deployment.worker.log_tail()


def test_promotion_mid_stream_switches_between_batches(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    run_labeler(
        deployment.env,
        "models",
        "import",
        str(digits.model_path),
        "--classes",
        ",".join(CLASSES),
        "--no-promote",
    )
    keys = [f"stream/{i:03d}.png" for i in range(160)]
    for key, sample in zip(keys, digits.held_out, strict=False):
        deployment.site.incoming.put(key, sample.data)
    batches = [keys[i : i + 8] for i in range(0, len(keys), 8)]
    results = []
    for n, chunk in enumerate(batches):
        payload = {"batch_id": f"stream-{n}", "keys": chunk}
        results.append(deployment.app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}))
        if n == len(batches) // 3:
            wait_until(lambda: results[0].ready(), 120, "first batch of the stream")
            run_labeler(deployment.env, "models", "promote", "2")
    versions = [r.get(timeout=300)["model_version"] for r in results]

    records = deployment.site.records(keys)
    by_batch: dict[str, set[int]] = {}
    for record in records.values():
        by_batch.setdefault(record.batch_id or "", set()).add(record.model_version)
    assert len(records) == len(keys)
    assert all(len(v) == 1 for v in by_batch.values()), "a batch mixed two model versions"
    assert (versions[0], versions[-1]) == (1, 2)
    assert versions == sorted(versions), "once a worker serves v2 it never goes back"
    assert Counter(versions)[2] >= len(batches) // 3
    log = Path(deployment.worker.log_path).read_text()
    assert "loaded model digits v2" in log, json.dumps(versions)
