"""`labeler review`: refusing an open address without credentials, reindex, hash-password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from review import Reviewers
from storage import LabelRecord, LocalStore, label_key
from testbed.processes import LABELER, labeler_env, run_labeler
from workers.review import ReviewQueue


def test_refuses_a_public_address_without_credentials(tmp_path: Path, redis_url: str) -> None:
    env = labeler_env(data_dir=tmp_path, broker_url=redis_url)
    result = subprocess.run(
        [*LABELER, "review", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "LABELER_REVIEW_USERS" in result.stderr
    assert "127.0.0.1" in result.stderr


def test_bad_credentials_say_what_to_fix(tmp_path: Path, redis_url: str) -> None:
    env = labeler_env(data_dir=tmp_path, broker_url=redis_url, review_users="ana:plaintext")
    result = subprocess.run(
        [*LABELER, "review"], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode != 0
    assert "not a scrypt hash" in result.stderr
    assert "plaintext" not in result.stderr  # whatever was there stays out of the message


def test_hash_password_makes_a_line_the_app_accepts(tmp_path: Path) -> None:
    result = subprocess.run(
        [*LABELER, "review", "hash-password", "ana"],
        input="pa55word\npa55word\n",
        env=labeler_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = result.stdout.strip().splitlines()[-1]

    reviewers = Reviewers.parse([line], "output")
    assert reviewers.check("ana", "pa55word")
    assert not reviewers.check("ana", "pa55wort")
    assert "pa55word" not in result.stdout


def test_reindex_rebuilds_the_queue_from_labels(tmp_path: Path, redis_url: str) -> None:
    labels = LocalStore(tmp_path / "labels")
    for n, needs_review in enumerate([True, False, True]):
        record = LabelRecord(
            source_key=f"{n}.png",
            source_etag="e",
            model_name="default",
            model_version=1,
            label="7",
            score=0.5,
            needs_review=needs_review,
            created_at=float(n),
        )
        labels.put(label_key(record.source_key), record.model_dump_json().encode())
    labels.put("junk.json", b"not a record")

    result = run_labeler(labeler_env(data_dir=tmp_path, broker_url=redis_url), "review", "reindex")

    assert "2 records wait for review" in result.stdout
    queue = ReviewQueue(redis.Redis.from_url(redis_url))
    assert queue.counts() == {"7": 2}
    first = queue.claim()
    assert first is not None
    assert first.item.key == "0.png"
