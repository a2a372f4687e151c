"""`labeler up` as one system: commands find its broker, it restarts what dies, one stack per
data directory, and `labeler status` shows it whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from labeler.sample_data import digit_samples
from labeler.stack_record import StackRecord, read_record
from storage import LabelRecord
from testbed.digits import CLASSES
from testbed.processes import (
    LABELER,
    TEST_CREDENTIALS,
    DispatcherProcess,
    labeler_env,
    run_labeler,
    running_worker,
)
from testbed.services import MotoServer, free_port, free_ports
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture

pytestmark = pytest.mark.slow

# A worker killed mid-batch leaves its batch reserved until the visibility timeout: short here.
SHORT_VISIBILITY = {
    "inference_visibility_timeout_seconds": 20,
    "inference_time_limit_seconds": 15,
    "retry_backoff_max_seconds": 3,
}
COMPONENTS = {"redis", "inference-worker", "training-worker", "dispatcher", "beat", "review"}


class Up:
    """``labeler up`` in a process of its own, as a user starts it in a terminal."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*LABELER, "up", "--data-dir", str(data_dir)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: self.record() is not None or self.process.poll() is not None, 120, "stack up"
        )
        assert self.process.poll() is None, self.tail()

    def record(self) -> StackRecord | None:
        record = read_record(self.data_dir)
        return record if record is not None and record.pid == self.process.pid else None

    def pid(self, name: str) -> int:
        record = self.record()
        assert record is not None, self.tail()
        (pid,) = [c.pid for c in record.components if c.name == name]
        assert pid is not None
        return pid

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.process.wait(120)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _dead_broker() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: `labeler up` starts its own


def _status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [*LABELER, "status", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    return result.returncode, json.loads(result.stdout)


def _component(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in document["components"] if c["name"] == name]
    return found


def _labels(data_dir: Path, prefix: str) -> list[Path]:
    return sorted((data_dir / "labels" / prefix).rglob("*.json"))


def _read(path: Path) -> LabelRecord:
    return LabelRecord.model_validate_json(path.read_bytes())


def test_commands_find_the_stack_and_status_shows_it_whole(
    tmp_path: Path, digits: DigitsFixture
) -> None:
    data_dir = tmp_path / "data"
    port = free_ports(4)  # three components and `labeler up` itself
    env = labeler_env(
        data_dir=data_dir,
        broker_url=_dead_broker(),
        model_name="digits",
        metrics_port=port,
        scan_interval_seconds=0,
        watch_incoming=False,  # only `labeler submit` queues work here
        train_image_size=32,
        train_architecture="small_cnn",
        train_max_epochs=2,
        train_fine_tune_epochs=1,
        gate_min_accuracy=0,
    )
    for sample in digit_samples()[:300]:
        path = data_dir / "training" / sample.label / sample.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)
    up = Up(env, data_dir, tmp_path / "up.log")
    try:
        retrain = run_labeler(env, "retrain", "--wait", timeout=600)
        assert "using the broker of the stack running on" in retrain.stderr
        assert json.loads(retrain.stdout[retrain.stdout.index("{") :])["outcome"] == "promoted"

        folder = digits.held_out[:20]
        for n, sample in enumerate(folder):
            (data_dir / "incoming" / "folder").mkdir(parents=True, exist_ok=True)
            (data_dir / "incoming" / "folder" / f"{n}.png").write_bytes(sample.data)
        submit = run_labeler(env, "submit", "folder", "--wait", timeout=300)
        assert "labeled 20, errors 0" in submit.stdout, submit.stdout
        assert len(_labels(data_dir, "folder")) == 20

        code, document = _status(env)
        assert code == 0, document
        assert {c["name"] for c in document["components"]} == COMPONENTS
        assert all(c["up"] for c in document["components"]), document
        assert document["model"]["version"] == 1
        assert document["last_retrain"]["outcome"] == "passed the gate"
        assert document["retrains"]["promoted"] == 1
        assert document["queues"]["inference"] == {"waiting": 0, "reserved": 0}
        assert document["images"]["labeled"] == 20
        written = list(map(_read, _labels(data_dir, "folder")))
        flagged = [r for r in written if r.waits_for_review]
        kinds = document["review_kinds"]  # the worker indexed each; the retrain its issues
        assert kinds["low_confidence"] + kinds["audits"] == len(flagged)
        assert document["review_pending"] == len(flagged) + kinds["label_issues"]
        auto = [r for r in written if r.ok and not r.needs_review]
        assert document["label_quality"]["auto"]["labels"] == len(auto)  # counted as written
        wait_until(
            lambda: (_status(env)[1]["last_minute"] or {}).get("labeled") == 20,
            30,
            "the 20 images in the last minute's activity",
            every=1,
        )
        text = subprocess.run([*LABELER, "status"], env=env, capture_output=True, text=True)
        assert text.returncode == 0
        assert text.stdout.startswith("OK"), text.stdout
        assert "automatic labels (v1): " in text.stdout, text.stdout

        os.kill(up.pid("inference-worker"), signal.SIGKILL)
        down: list[dict[str, Any]] = []

        def reported_down() -> bool:
            code, document = _status(env)
            down[:] = [c for c in document["components"] if not c["up"]]
            return code == 1

        wait_until(reported_down, 60, "status exiting 1 after the worker's SIGKILL", every=0.5)
        assert [c["name"] for c in down] == ["inference-worker"], down
        wait_until(lambda: _status(env)[0] == 0, 120, "the worker back and status 0", every=1)
        assert _component(_status(env)[1], "inference-worker")["restarts"] == 1
    finally:
        assert up.stop() == 0, up.tail()
    assert read_record(data_dir, stale=True) is None, "a clean stop removes the record"


def test_up_restarts_what_dies_and_every_image_gets_one_record(
    tmp_path: Path, digits: DigitsFixture
) -> None:
    data_dir = tmp_path / "data"
    port = free_ports(4)
    env = labeler_env(
        data_dir=data_dir,
        broker_url=_dead_broker(),
        model_name="digits",
        metrics_port=port,
        scan_interval_seconds=0.5,
        batch_max_wait_ms=200,
        batch_max_images=25,
        **SHORT_VISIBILITY,
    )
    run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
    up = Up(env, data_dir, tmp_path / "up.log")
    try:
        burst = data_dir / "incoming" / "burst"
        burst.mkdir(parents=True)
        for n in range(800):  # dropped at once
            (burst / f"{n:03d}.png").write_bytes(digits.held_out[n % 300].data)
        done_at_kill = []
        for name in ("inference-worker", "dispatcher", "redis"):
            wait_until(lambda: len(_labels(data_dir, "burst")) >= 25, 120, "labeling under way")
            done_at_kill.append(len(_labels(data_dir, "burst")))
            old = up.pid(name)
            os.kill(old, signal.SIGKILL)  # the main process only, as the OOM killer would
            wait_until(lambda: up.pid(name) != old, 10, f"{name} restarted")  # noqa: B023
        assert max(done_at_kill) < 800, f"a kill came after the run (done: {done_at_kill})"
        wait_until(lambda: len(_labels(data_dir, "burst")) == 800, 300, "all 800 labeled")
        assert up.process.poll() is None, up.tail()
        records = [
            LabelRecord.model_validate_json(p.read_bytes()) for p in _labels(data_dir, "burst")
        ]
        assert sorted(r.source_key for r in records) == [f"burst/{n:03d}.png" for n in range(800)]
        assert all(r.label is not None for r in records)
        record = up.record()
        assert record is not None
        assert {c.name: c.restarts for c in record.components} == {
            "redis": 1,
            "inference-worker": 1,
            "training-worker": 0,
            "dispatcher": 1,
            "beat": 0,
            "review": 0,
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 3}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        assert 'labeler_component_restarts_total{component="dispatcher"} 1.0' in metrics
    finally:
        assert up.stop() == 0, up.tail()


def test_one_stack_per_data_dir_and_a_killed_one_is_taken_over(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = labeler_env(data_dir=data_dir, broker_url=_dead_broker())
    first = Up(env, data_dir, tmp_path / "first.log")
    record = first.record()
    assert record is not None
    try:
        started = time.monotonic()
        second = subprocess.run(
            [*LABELER, "up", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        refused_after = time.monotonic() - started
        assert second.returncode == 1
        assert f"pid {first.process.pid}" in second.stderr
        assert record.broker_url in second.stderr
        assert refused_after < 10, f"refused only after {refused_after:.1f} s"
    finally:
        first.process.kill()  # SIGKILL: no clean stop, the record stays behind
        first.process.wait(30)
    assert read_record(data_dir) is None, "a record whose process is gone is stale"
    third = Up(env, data_dir, tmp_path / "third.log")
    try:
        again = third.record()
        assert again is not None
        assert again.broker_url == record.broker_url, "the private Redis keeps its port"
    finally:
        assert third.stop() == 0, third.tail()


def test_status_checks_a_stack_it_did_not_start_given_its_urls(
    tmp_path: Path, redis_url: str
) -> None:
    # As against docker compose: a broker, a worker and a dispatcher started on their own.
    worker_port, dispatcher_port = free_port(), free_port()
    common = {"data_dir": tmp_path / "data", "broker_url": redis_url}
    args = [
        "status",
        "--json",
        "--component",
        f"inference-worker=http://127.0.0.1:{worker_port}",
        "--component",
        f"dispatcher=http://127.0.0.1:{dispatcher_port}",
    ]
    status_env = labeler_env(**common)
    worker_env = labeler_env(**common, metrics_port=worker_port)
    dispatcher_env = labeler_env(**common, metrics_port=dispatcher_port, scan_interval_seconds=0)
    with running_worker(worker_env, tmp_path / "worker.log", "--queues", "inference"):
        dispatcher = DispatcherProcess(dispatcher_env, tmp_path / "dispatcher.log").start()
        try:
            whole = subprocess.run(
                [*LABELER, *args], env=status_env, capture_output=True, text=True
            )
        finally:
            dispatcher.stop()
        broken = subprocess.run([*LABELER, *args], env=status_env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    document = json.loads(whole.stdout)
    assert [(c["name"], c["up"]) for c in document["components"]] == [
        ("inference-worker", True),
        ("dispatcher", True),
    ]
    assert any(node.startswith("inference@") for node in document["celery_nodes"])
    assert document["source"] == "the given URLs"
    assert broken.returncode == 1
    dispatcher_status = _component(json.loads(broken.stdout), "dispatcher")
    assert not dispatcher_status["up"]
    assert "/healthz does not answer" in dispatcher_status["detail"]
    assert _component(json.loads(broken.stdout), "inference-worker")["up"]


def test_status_shows_whether_the_sqs_queue_answers(
    tmp_path: Path, redis_url: str, s3_server: MotoServer
) -> None:
    sqs = boto3.client(
        "sqs",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=TEST_CREDENTIALS["access_key_id"],
        aws_secret_access_key=TEST_CREDENTIALS["secret_access_key"],
    )
    queue_url = sqs.create_queue(QueueName=f"status-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="not an event")  # stays: no dispatcher reads
    closed = f"http://127.0.0.1:{free_port()}/123456789012/images"  # nothing listens there
    missing = f"{s3_server.endpoint_url}/123456789012/no-such-queue"
    port = free_port()
    common = {
        "data_dir": tmp_path / "data",
        "broker_url": redis_url,
        "s3_access_key_id": TEST_CREDENTIALS["access_key_id"],
        "s3_secret_access_key": TEST_CREDENTIALS["secret_access_key"],
        "scan_interval_seconds": 0,
    }
    args = ["status", "--component", f"dispatcher=http://127.0.0.1:{port}"]

    def status(queue: str, *more: str) -> subprocess.CompletedProcess[str]:
        env = labeler_env(**common, events_sqs_url=queue)
        return subprocess.run([*LABELER, *args, *more], env=env, capture_output=True, text=True)

    # The case: a dispatcher at a queue it cannot reach answers its /healthz.
    env = labeler_env(**common, metrics_port=port, events_sqs_url=closed)
    dispatcher = DispatcherProcess(env, tmp_path / "dispatcher.log").start()
    try:
        wait_until(lambda: "does not answer" in dispatcher.log(), 60, "the dispatcher saying so")
        started = time.monotonic()
        unreachable = status(closed, "--json")
        took = time.monotonic() - started
        text = status(closed)
    finally:
        assert dispatcher.stop() == 0, dispatcher.log()
    assert dispatcher.log().count(f"SQS queue {closed} (endpoint http://127.0.0.1:") == 1
    assert unreachable.returncode == 1, unreachable.stdout + unreachable.stderr
    document = json.loads(unreachable.stdout)
    assert _component(document, "dispatcher")["up"]
    source = document["event_source"]
    assert not document["ok"]
    assert not source["reachable"]
    assert (source["queue_url"], source["endpoint_url"]) == (closed, closed.rsplit("/", 2)[0])
    assert "Could not connect to the endpoint URL" in source["detail"]
    assert text.returncode == 1
    assert text.stdout.startswith("DEGRADED")
    assert f"events     SQS {closed} at {closed.rsplit('/', 2)[0]}: unreachable" in text.stdout
    print(f"labeler status with the SQS endpoint down: {took:.1f} s")

    dispatcher = DispatcherProcess(
        {**env, "LABELER_EVENTS_SQS_URL": queue_url}, tmp_path / "d2.log"
    )
    dispatcher.start()
    try:
        reachable = status(queue_url, "--json")
        gone = status(missing, "--json")
    finally:
        assert dispatcher.stop() == 0, dispatcher.log()
    assert reachable.returncode == 0, reachable.stdout + reachable.stderr
    source = json.loads(reachable.stdout)["event_source"]
    assert source["reachable"]
    assert source["endpoint_url"] == s3_server.endpoint_url
    assert source["waiting"] + source["in_flight"] == 1
    assert gone.returncode == 1
    assert "queue does not exist" in json.loads(gone.stdout)["event_source"]["detail"]
