"""OpenVINO end to end: `models import --calibration-dir`, `models optimize`, and a real worker
hot-swapping between a TensorFlow-only version and an OpenVINO one while batches flow."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from labeler.settings import settings_from_env
from labeler.wiring import build_app
from tasks.contracts import CLASSIFY_BATCH
from testbed.digits import CLASSES
from testbed.processes import WorkerProcess, run_labeler, tensorflow_libraries
from testbed.services import MotoServer, RedisServer, free_port
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.support.deployment import S3Deployment, child_pids, s3_deployment, scrape

pytestmark = pytest.mark.slow


@pytest.fixture
def site(
    redis_server: RedisServer, s3_server: MotoServer, digits: DigitsFixture
) -> Iterator[S3Deployment]:
    """v1 of the digits model in production, registered without OpenVINO artifacts."""
    redis.Redis.from_url(redis_server.url).flushall()
    with s3_deployment(s3_server.endpoint_url, digits.model_path, name="openvino") as deployment:
        yield deployment


def test_hot_swap_between_tensorflow_and_openvino_loses_nothing(
    site: S3Deployment, redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    port = free_port()
    env = site.env(
        redis_server.url,
        model_reload_seconds=0.5,
        inference_batch_size=8,
        runtime="openvino",
        metrics_port=port,
    )
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, sample in enumerate(digits.held_out[:150]):
        (calibration / f"{i:03d}.png").write_bytes(sample.data)
    classes = ",".join(CLASSES)
    out = run_labeler(
        env,
        "models",
        "import",
        str(digits.model_path),
        "--classes",
        classes,
        "--no-promote",
        "--calibration-dir",
        str(calibration),
    )
    assert "INT8 approved" in out.stdout, out.stdout
    keys = [f"swap/{i:03d}.png" for i in range(96)]
    for key, sample in zip(keys, digits.held_out[150:], strict=False):
        site.incoming.put(key, sample.data)
    app = build_app(settings_from_env(env))
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    try:
        results = []
        for n in range(0, len(keys), 8):
            payload = {"batch_id": f"swap-{n}", "keys": keys[n : n + 8]}
            results.append(app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}))
            if n == 24:
                wait_until(lambda: results[0].ready(), 180, "first batch of the stream")
                run_labeler(env, "models", "promote", "2")
        versions = [r.get(timeout=300)["model_version"] for r in results]
        info = {
            (rt, p): scrape(port, "labeler_model_info", runtime=rt, serving_format=p)
            for rt, p in (("tensorflow", "fp32"), ("openvino", "int8"))
        }
        approved = scrape(port, "labeler_model_int8_approved", model="digits")
        assert worker.process is not None
        (child,) = child_pids(worker.process.pid)
        served_tensorflow = tensorflow_libraries(child)  # v1 had no IR: TensorFlow served it
    finally:
        worker.stop()

    assert served_tensorflow, "a child that served TensorFlow maps its libraries"
    assert info == {("tensorflow", "fp32"): 0, ("openvino", "int8"): 1}
    assert approved == 1
    records = site.records(keys)
    assert len(records) == len(keys)
    served = {(r.model_version, r.runtime, r.serving_format) for r in records.values()}
    assert served == {(1, "tensorflow", "fp32"), (2, "openvino", "int8")}, served
    by_batch: dict[str, set[int]] = {}
    for record in records.values():
        by_batch.setdefault(record.batch_id or "", set()).add(record.model_version)
    assert all(len(v) == 1 for v in by_batch.values()), "a batch mixed two model versions"
    assert versions == sorted(versions)
    assert sum(
        r.label == s.label
        for r, s in zip((records[k] for k in keys), digits.held_out[150:], strict=False)
    ) >= 0.95 * len(keys)
    assert "has no OpenVINO artifacts" in worker.log_tail(20000)


def test_a_worker_serving_openvino_never_loads_tensorflow(
    site: S3Deployment, redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    """TensorFlow is ~0.7 GB and seconds of start-up a CPU worker serving the IR does not need:
    as `labeler up` runs it (`auto`, inference and relabel), neither its prefork child nor its
    parent maps any TensorFlow library after labeling."""
    env = site.env(redis_server.url)  # LABELER_RUNTIME=auto: OpenVINO on a host with no GPU
    run_labeler(env, "models", "optimize", "digits", "1")
    keys = list(site.put_images("no-tf/", digits.held_out, 32))
    app = build_app(settings_from_env(env))
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference,relabel").start()
    try:
        payload = {"batch_id": "no-tf", "keys": keys}
        app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}).get(timeout=300)
        assert worker.process is not None
        parent = worker.process.pid
        (child,) = child_pids(parent)
        mapped = {pid: tensorflow_libraries(pid) for pid in (parent, child)}
    finally:
        worker.stop()

    assert mapped == {parent: [], child: []}
    records = site.records(keys)
    assert {(r.runtime, r.serving_format) for r in records.values()} == {("openvino", "fp32")}
    assert all(r.label is not None for r in records.values())


def test_models_optimize_gives_an_old_version_its_artifacts(
    site: S3Deployment, redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    env = site.env(redis_server.url, runtime="openvino")
    assert "tensorflow only" in run_labeler(env, "models", "list").stdout
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, sample in enumerate(digits.held_out[:100]):
        (calibration / f"{i:03d}.png").write_bytes(sample.data)

    out = run_labeler(
        env, "models", "optimize", "digits", "1", "--calibration-dir", str(calibration)
    )

    assert "OpenVINO artifacts for digits v1: FP32; INT8 approved" in out.stdout
    assert "[openvino fp32+int8 approved]" in run_labeler(env, "models", "list").stdout
    site.incoming.put("old/0.png", digits.held_out[200].data)
    app = build_app(settings_from_env(env))
    with_worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    try:
        payload = {"batch_id": "old", "keys": ["old/0.png"]}
        app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}).get(timeout=300)
    finally:
        with_worker.stop()
    record = site.record("old/0.png")
    assert (record.model_version, record.runtime, record.serving_format) == (1, "openvino", "int8")
    assert record.label == digits.held_out[200].label


def test_killed_openvino_child_loses_no_batch(
    site: S3Deployment, redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    env = site.env(
        redis_server.url, runtime="openvino", batch_max_images=16, inference_batch_size=16
    )
    run_labeler(env, "models", "optimize", "digits", "1")  # FP32 only: no training data
    etags = site.put_images("killed/", digits.held_out, 320)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    try:
        app = build_app(settings_from_env(env))
        keys = list(etags)
        for n in range(0, len(keys), 16):
            payload = {"batch_id": f"killed-{n}", "keys": keys[n : n + 16]}
            app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload})
        wait_until(lambda: len(site.labeled("killed/")) >= 64, 180, "64 labels")
        assert worker.process is not None
        (child,) = child_pids(worker.process.pid)
        os.kill(child, signal.SIGKILL)
        assert len(site.labeled("killed/")) < len(keys)
        wait_until(lambda: len(site.labeled("killed/")) == len(keys), 300, "every image labeled")
    finally:
        worker.stop()

    records = site.records(keys)
    assert {(r.runtime, r.serving_format) for r in records.values()} == {("openvino", "fp32")}
    assert all(r.source_etag == etags[k] and r.error is None for k, r in records.items())
    assert worker.log_tail(200_000).count("loaded model digits v1 (openvino fp32)") == 2
