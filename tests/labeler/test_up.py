"""`labeler up` and `labeler demo`: the embedded default, run as a user runs it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from storage import LabelRecord
from testbed.digits import CLASSES
from testbed.processes import LABELER, labeler_env, run_labeler
from testbed.services import free_port, free_ports
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture

pytestmark = pytest.mark.slow


def _up(env: dict[str, str], data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*LABELER, "up", "--data-dir", str(data_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _labels(data_dir: Path, keys: list[str]) -> dict[str, LabelRecord]:
    found = {}
    for key in keys:
        path = data_dir / "labels" / f"{key}.json"
        if path.exists():
            found[key] = LabelRecord.model_validate_json(path.read_bytes())
    return found


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return process.wait(120)


def test_up_labels_dropped_files_and_carries_on_after_a_restart(
    tmp_path: Path, digits: DigitsFixture
) -> None:
    data_dir = tmp_path / "data"
    port = free_ports(4)  # the inference worker, the training worker, the dispatcher, `up`
    env = labeler_env(
        data_dir=data_dir,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing answers: a private Redis
        model_name="digits",
        scan_interval_seconds=0.5,
        batch_max_wait_ms=200,
        metrics_port=port,
        review_port=(review_port := free_port()),  # the review app is a component too
    )
    run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
    log = tmp_path / "up.log"
    first = [f"drop/first-{i}.png" for i in range(5)]
    second = [f"drop/second-{i}.png" for i in range(5)]

    up = _up(env, data_dir, log)
    try:
        wait_until(lambda: b"drop images into" in log.read_bytes(), 60, "labeler up banner")
        for key, sample in zip(first, digits.held_out, strict=False):
            (data_dir / "incoming" / key).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / "incoming" / key).write_bytes(sample.data)  # a user copying files
        wait_until(lambda: len(_labels(data_dir, first)) == 5, 120, "labels for dropped files")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        review = f"http://127.0.0.1:{review_port}/healthz"
        wait_until(lambda: urllib.request.urlopen(review, timeout=5), 60, "the review app")
    finally:
        assert _stop(up) == 0, log.read_text()[-3000:]
    assert b"stopped." in log.read_bytes()
    before = {k: r.created_at for k, r in _labels(data_dir, first).items()}
    assert list((data_dir / "redis").glob("appendonly*")), "private Redis persists in DATA_DIR"

    up = _up(env, data_dir, log)
    try:
        for key, sample in zip(second, digits.held_out[5:], strict=False):
            (data_dir / "incoming" / key).write_bytes(sample.data)
        wait_until(lambda: len(_labels(data_dir, second)) == 5, 120, "labels after a restart")
    finally:
        assert _stop(up) == 0, log.read_text()[-3000:]
    records = _labels(data_dir, first + second)
    assert {k: r.created_at for k, r in records.items() if k in first} == before
    assert all(
        r.label == s.label
        for r, s in zip([records[k] for k in first + second], digits.held_out, strict=False)
    )


def test_demo_runs_end_to_end_on_a_reduced_set(tmp_path: Path) -> None:
    env = labeler_env()
    out = run_labeler(
        env,
        "demo",
        "--data-dir",
        str(tmp_path / "demo"),
        "--limit",
        "600",
        "--review-sample",
        "15",
        timeout=900,
    )
    assert "labeled 120 held-out images through the queue: accuracy" in out.stdout
    accuracy = float(out.stdout.split("accuracy ")[-1].split()[0])
    assert accuracy >= 0.9
    report = tmp_path / "demo" / "reports" / "digits" / "1" / "report.html"
    assert report.read_text().startswith("<!doctype html>")
    evaluation = json.loads(report.with_name("evaluation.json").read_text())
    assert evaluation["gate"]["passed"] is True
    review_url = f"http://127.0.0.1:{env['LABELER_REVIEW_PORT']}/"
    assert f"digits wait for review at {review_url}" in out.stdout
    # The flywheel: flagged digits answered from the truth join training/, v2 says so.
    reviewed = re.search(r"reviewed (\d+) flagged digits", out.stdout)
    assert reviewed is not None, out.stdout
    v2 = json.loads((report.parents[1] / "2" / "evaluation.json").read_text())
    assert v2["reviewed_images_added"] == int(reviewed.group(1)) > 0
    assert f"{v2['reviewed_images_added']} reviewed images joined" in out.stdout
