"""Label issues on the digits: a known share of labels moved to a wrong class is mostly found,
with few false alarms. The model learns from the noisy labels, as a retrain would."""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from labeler.sample_data import digit_samples
from testbed.digits import CLASSES, INPUT_SIZE
from workers.inference import decode_image
from workers.training.label_issues import (
    LabelIssue,
    embed,
    out_of_sample_probabilities,
    rank_issues,
)

NOISE = 0.05


@pytest.fixture(scope="module")
def noisy_digits() -> tuple[list[str], np.ndarray, np.ndarray, set[int]]:
    """(keys, images, given labels, indices whose label was moved)."""
    samples = digit_samples()
    images = np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in samples])
    labels = np.array([int(s.label) for s in samples], np.int64)
    rng = np.random.default_rng(3)
    moved = rng.choice(len(labels), int(NOISE * len(labels)), replace=False)
    labels[moved] = (labels[moved] + rng.integers(1, len(CLASSES), len(moved))) % len(CLASSES)
    return [s.key for s in samples], images, labels, {int(i) for i in moved}


def test_most_moved_labels_are_found_with_few_false_alarms(
    noisy_digits: tuple[list[str], np.ndarray, np.ndarray, set[int]],
) -> None:
    from workers.training import make_small_cnn

    keys, images, labels, moved = noisy_digits
    model = make_small_cnn(INPUT_SIZE, len(CLASSES), seed=7)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)

    batches = (images[i : i + 256] for i in range(0, len(images), 256))
    embeddings = embed(model, batches, len(images))
    probabilities = out_of_sample_probabilities(embeddings, labels, folds=5, seed=0)
    issues, found = rank_issues(keys, labels, probabilities, CLASSES, limit=10_000)

    flagged = {keys.index(issue.key) for issue in issues}
    recall = len(flagged & moved) / len(moved)
    precision = len(flagged & moved) / max(len(flagged), 1)
    assert found == len(issues)
    assert recall >= 0.7, (recall, precision)
    assert precision >= 0.6, (recall, precision)
    # The worst-ranked issues are moved labels, and each suggests the digit's true class.
    truth = {s_key: s_key.split("/")[0] for s_key in keys}
    worst = issues[:10]
    assert sum(keys.index(i.key) in moved for i in worst) >= 8
    assert sum(i.suggested == truth[i.key] for i in worst) >= 7
    assert [i.quality for i in issues] == sorted(i.quality for i in issues)


def test_a_retrain_lists_reports_and_queues_moved_labels(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from labeler.settings import Settings
    from labeler.wiring import retrain_config, training_config
    from monitoring.metrics import Metrics
    from storage import LocalStore
    from storage.registry import ModelRegistry
    from workers.training import Retrainer

    training, reports = LocalStore(tmp_path / "training"), LocalStore(tmp_path / "reports")
    rng = np.random.default_rng(5)
    moved: set[str] = set()
    for sample in digit_samples():
        key = sample.key
        if rng.random() < NOISE:
            wrong = str((int(sample.label) + rng.integers(1, 10)) % 10)
            key = f"{wrong}/{sample.key.split('/', 1)[1]}"
            moved.add(key)
        training.put(key, sample.data)
    queued: list[LabelIssue] = []
    retrainer = Retrainer(
        training,
        ModelRegistry(LocalStore(tmp_path / "models"), "digits"),
        reports,
        Metrics(CollectorRegistry()),
        replace(
            retrain_config(Settings()),
            training=replace(training_config(Settings()), input_size=INPUT_SIZE),
            cache_dir=tmp_path / "cache",
            export_openvino=False,
        ),
        queue_label_issues=lambda issues: queued.extend(issues) or len(issues),
    )

    outcome = retrainer.run()

    evaluation = json.loads(reports.get(f"digits/{outcome.version}/evaluation.json").data)
    listed = {issue["key"] for issue in evaluation["label_issues"]}
    assert outcome.label_issues == len(listed) == evaluation["label_issue_search"]["found"]
    assert len(listed & moved) / len(moved) >= 0.6, (len(listed & moved), len(moved), len(listed))
    assert len(listed & moved) / len(listed) >= 0.5, (len(listed & moved), len(listed))
    assert {issue.key for issue in queued} == listed
    assert all(training.exists(key) for key in moved)  # nothing moved without a person
    page = reports.get(f"digits/{outcome.version}/report.html").data.decode()
    assert "Likely label errors" in page
    worst = evaluation["label_issues"][0]
    assert html.escape(worst["key"]) in page
    assert page.count('height=64 src="data:image/png;base64,') == min(len(listed), 24)
