"""The loop end to end: a weak first model -> its unsure labels reviewed through the API ->
retrain -> a new version with more training data, promoted by the gate.

Real training and inference workers, a real redis-server, the embedded local store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from labeler.commands_review import build_review_app
from labeler.sample_data import digit_samples
from labeler.settings import settings_from_env
from labeler.wiring import Stores
from review import Reviewers
from storage import Area, LabelRecord
from storage.keys import label_key, report_key
from testbed.processes import labeler_env, run_labeler, running_worker
from workers.review import ReviewQueue

pytestmark = pytest.mark.slow
FIRST_PER_CLASS = 10  # a deliberately weak first model: 100 images


def _retrain(env: dict[str, str]) -> dict[str, object]:
    out = run_labeler(env, "retrain", "--wait", "--timeout", "600", timeout=700).stdout
    outcome: dict[str, object] = json.loads(out[out.index("{") :])
    return outcome


def test_reviews_become_training_data_and_a_better_model(tmp_path: Path, redis_url: str) -> None:
    env = labeler_env(
        data_dir=tmp_path / "data",
        broker_url=redis_url,
        model_name="digits",
        train_image_size=32,
        train_max_epochs=12,
        train_fine_tune_epochs=4,
        model_reload_seconds=0.5,
        gate_min_accuracy=0.3,
        gate_max_recall_drop=0.5,
    )
    settings = settings_from_env(env)
    stores = Stores(settings)
    samples = digit_samples()
    first = [
        s for d in range(10) for s in [x for x in samples if x.label == str(d)][:FIRST_PER_CLASS]
    ]
    used = {s.key for s in first}
    new = [s for s in samples if s.key not in used][::3][:400]
    training, incoming = stores.area(Area.TRAINING), stores.area(Area.INCOMING)
    for sample in first:
        training.put(sample.key, sample.data)
    logs = tmp_path / "logs"
    logs.mkdir()

    with (
        running_worker(env, logs / "inference.log", "--queues", "inference"),
        running_worker(env, logs / "training.log", "--queues", "training"),
    ):
        v1 = _retrain(env)
        assert v1["outcome"] == "promoted", v1
        for sample in new:
            incoming.put(f"new/{sample.key}", sample.data)
        run_labeler(env, "submit", "new/", "--wait", "--timeout", "300", timeout=400)

        labels = stores.area(Area.LABELS)
        records = [
            LabelRecord.model_validate_json(labels.get(label_key(f"new/{s.key}")).data) for s in new
        ]
        unsure = {r.source_key for r in records if r.waits_for_review}  # audits included
        audits = {r.source_key for r in records if r.audit}
        assert unsure, "a weak model is unsure of some digits"
        queue = ReviewQueue(redis.Redis.from_url(redis_url))
        # The worker indexed each one as it wrote it; v1's retrain queued its label issues.
        issues = queue.kinds()["label_issues"]
        assert queue.pending() == len(unsure) + issues

        decided, kept = _review_everything(build_review_app(settings, Reviewers({})))
        assert sorted(decided) == sorted(unsure)
        assert len(kept) == issues
        assert queue.pending() == 0

        v2 = _retrain(env)

    assert v2["outcome"] == "promoted", v2
    reports = stores.area(Area.REPORTS)
    before = json.loads(reports.get(report_key("digits", 1, "evaluation.json")).data)
    after = json.loads(reports.get(report_key("digits", 2, "evaluation.json")).data)
    assert after["reviewed_images_added"] == len(decided)
    assert after["training_images"] == before["training_images"] + len(decided)
    html = reports.get(report_key("digits", 2, "report.html")).data.decode()
    assert f"<td>reviewed images added</td><td>{len(decided)}</td>" in html
    # v2's report states how right v1's automatic labels were, from the audits just decided.
    audited = after["production_label_quality"]
    assert audited["model_version"] == 1
    assert audited["auto"]["audited"] + audited["auto"]["discarded"] == len(audits)
    assert ("Automatic labels of production v1 (blind audits)" in html) == bool(audits)
    # The gate compared v2 with v1 on v2's test split (v1's own split was a handful of images).
    assert after["gate"]["passed"] is True
    assert after["production"] is not None


def _review_everything(app: object) -> tuple[list[str], list[str]]:
    """Answer every queued item from the truth (the digit is the key's folder): the records
    decided, and the label issues kept (the training digits are filed under their truth)."""
    decided, kept = [], []
    with TestClient(app, base_url="http://127.0.0.1") as client:  # type: ignore[arg-type]
        token = client.get("/api/csrf").json()["csrf"]
        while (item := client.get("/api/next").json()["item"]) is not None:
            body = {"key": item["key"], "token": item["token"], "action": "accept"}
            if item.get("label_issue"):
                kept.append(item["key"])
            else:
                truth = item["key"].split("/")[1]
                if item.get("audit") or item["label"] != truth:  # a blind audit names the class
                    body |= {"action": "correct", "label": truth}
                decided.append(item["key"])
            response = client.post("/api/decide", json=body, headers={"X-CSRF-Token": token})
            assert response.status_code == 200, response.text
    return decided, kept
