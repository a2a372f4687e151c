"""Retraining end to end: real training and inference workers, Redis and the moto S3 server."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from labeler.sample_data import digit_samples
from labeler.settings import Settings, settings_from_env
from labeler.wiring import Stores, build_app
from storage import Area, LabelRecord
from storage.keys import label_key, report_key
from tasks.app import LabelerCelery
from tasks.contracts import RETRAIN, TRAINING_QUEUE
from testbed.processes import run_labeler, running_worker
from testbed.services import MotoServer, RedisServer
from testbed.waiting import wait_until
from tests.support.deployment import s3_deployment

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    env: dict[str, str]
    settings: Settings
    stores: Stores
    app: LabelerCelery

    def label_version(self, key: str, data: bytes) -> int:
        """Drop ``data`` at ``key``, label it through the queue, return the model version used."""
        incoming, labels = self.stores.area(Area.INCOMING), self.stores.area(Area.LABELS)
        incoming.put(key, data)
        run_labeler(self.env, "submit", key, "--wait", "--timeout", "120")
        return LabelRecord.model_validate_json(labels.get(label_key(key)).data).model_version


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, s3_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    redis.Redis.from_url(redis_server.url).flushall()
    with s3_deployment(s3_server.endpoint_url, None, name="retrain") as site:
        env = site.env(
            redis_server.url,
            model_reload_seconds=0.5,
            train_image_size=32,
            train_max_epochs=12,
            train_fine_tune_epochs=4,
            gate_min_accuracy=0.9,
            train_cache_dir=tmp_path_factory.mktemp("train-cache"),
        )
        settings = settings_from_env(env)
        stores = Stores(settings)
        training = stores.area(Area.TRAINING)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: training.put(s.key, s.data), digit_samples()))
        logs = tmp_path_factory.mktemp("workers")
        with (
            running_worker(env, logs / "inference.log", "--queues", "inference"),
            running_worker(
                env, logs / "training.log", "--queues", "training", "--concurrency", "2"
            ),
        ):
            yield Cluster(env, settings, stores, build_app(settings))


def _production(cluster: Cluster) -> int | None:
    alias = cluster.stores.registry().production()
    return alias.version if alias else None


def test_first_retrain_is_promoted_and_served_without_restart(cluster: Cluster) -> None:
    out = run_labeler(cluster.env, "retrain", "--wait", "--timeout", "600", timeout=700)

    outcome = json.loads(out.stdout[out.stdout.index("{") :])
    assert outcome["outcome"] == "promoted"
    assert outcome["version"] == 1
    assert outcome["images"] == {"total": 1797, "fetched": 1797, "reused": 0, "failed": 0}
    assert "images: fetched" in out.stdout  # the cache phase, shown before the epochs
    assert _production(cluster) == 1
    reports = cluster.stores.area(Area.REPORTS)
    document = json.loads(reports.get(report_key("digits", 1, "evaluation.json")).data)
    evaluation = document["evaluation"]
    predictions = evaluation["predictions"]
    y_true = [p["true"] for p in predictions]
    y_pred = [p["predicted"] for p in predictions]
    names = evaluation["class_names"]
    recomputed = classification_report(
        y_true, y_pred, labels=names, output_dict=True, zero_division=0
    )
    assert evaluation["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert evaluation["macro_f1"] == pytest.approx(recomputed["macro avg"]["f1-score"])
    for name in names:
        assert evaluation["per_class"][name]["recall"] == pytest.approx(recomputed[name]["recall"])
    assert evaluation["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=names).tolist()
    assert evaluation["accuracy"] >= 0.95
    assert reports.exists(report_key("digits", 1, "report.html"))
    assert reports.get(report_key("digits", 1, "confusion_matrix.png")).data[:4] == b"\x89PNG"
    metadata = cluster.stores.registry().metadata(1)
    assert set(metadata.class_thresholds) == set(names)
    assert metadata.training_data_fingerprint
    # The retrain exported the OpenVINO IR and judged INT8 on the test split: a row per runtime.
    rows = {(r["runtime"], r["serving_format"]): r for r in document["runtimes"]}
    assert set(rows) == {("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "int8")}
    assert rows["openvino", "fp32"]["accuracy"] == pytest.approx(evaluation["accuracy"], abs=0.01)
    assert "approved" in rows["openvino", "int8"]
    assert cluster.stores.registry().artifacts(1) is not None
    # The inference worker was started before any model existed: it picks v1 up by itself.
    assert cluster.label_version("after-v1/7.png", digit_samples()[7].data) == 1
    record = LabelRecord.model_validate_json(
        cluster.stores.area(Area.LABELS).get(label_key("after-v1/7.png")).data
    )
    assert record.runtime == "openvino"  # auto on a CPU


def test_check_labels_by_hand_lists_and_queues_what_it_finds(cluster: Cluster) -> None:
    """`labeler check-labels --wait` on the training worker: the production version's training
    images get out-of-sample predictions; what they doubt is listed and queued, not moved."""
    version = _production(cluster)
    assert version is not None, "runs after the first retrain"
    training = cluster.stores.area(Area.TRAINING)
    before = sorted(info.key for info in training.list(""))
    out = run_labeler(cluster.env, "check-labels", "--wait", "--timeout", "600", timeout=700)

    outcome = json.loads(out.stdout[out.stdout.index("{") :])
    assert (outcome["outcome"], outcome["version"]) == ("checked", version)
    assert outcome["images"] == len(before)
    reports = cluster.stores.area(Area.REPORTS)
    document = json.loads(reports.get(report_key("digits", version, "evaluation.json")).data)
    assert document["label_issue_search"]["found"] == outcome["found"]
    listed = document["label_issues"]
    assert len(listed) == min(outcome["found"], 1000)
    assert all(issue["key"] in before and issue["given"] != issue["suggested"] for issue in listed)
    queued = redis.Redis.from_url(cluster.settings.broker_connection_url()).hkeys(
        "labeler:review:items"
    )
    assert {f"/training/{issue['key']}".encode() for issue in listed} <= set(queued)
    assert sorted(info.key for info in training.list("")) == before  # nothing moved


def test_worse_candidate_is_refused_and_production_stays(cluster: Cluster) -> None:
    training = cluster.stores.area(Area.TRAINING)
    rng = random.Random(3)
    samples = digit_samples()
    shuffled = [f"{rng.randrange(10)}/{s.key.split('/', 1)[1]}" for s in samples]

    def relabel(n: int) -> None:  # a bad night: every label shuffled
        training.delete(samples[n].key)
        training.put(shuffled[n], samples[n].data)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(relabel, range(len(samples))))

    out = run_labeler(cluster.env, "retrain", "--wait", "--timeout", "600", timeout=700)

    outcome = json.loads(out.stdout[out.stdout.index("{") :])
    assert outcome["outcome"] == "refused"
    assert outcome["version"] == 2
    assert any("accuracy" in reason for reason in outcome["reasons"])
    assert _production(cluster) == 1
    report = run_labeler(cluster.env, "report", "2").stdout
    assert "gate: refused" in report


def test_rollback_restores_the_previous_version_for_workers(cluster: Cluster) -> None:
    sample = digit_samples()[3].data
    run_labeler(cluster.env, "models", "promote", "2")
    wait_until(lambda: cluster.label_version("rb/a.png", sample) == 2, 60, "workers on v2")

    run_labeler(cluster.env, "models", "rollback")

    assert _production(cluster) == 1
    assert cluster.label_version("rb/b.png", sample) == 1


def test_two_retrains_at_once_only_one_runs(cluster: Cluster) -> None:
    first = cluster.app.send_task(RETRAIN, kwargs={"payload": {}}, queue=TRAINING_QUEUE)
    second = cluster.app.send_task(RETRAIN, kwargs={"payload": {}}, queue=TRAINING_QUEUE)

    outcomes = sorted(r.get(timeout=600)["outcome"] for r in (first, second))

    assert outcomes[1] == "skipped_locked"
    assert outcomes[0] in ("promoted", "refused")
    ran = next(o for o in (first.result, second.result) if o["outcome"] != "skipped_locked")
    # Nothing changed since the last run: every image comes from the training worker's cache.
    assert ran["images"] == {"total": 1797, "fetched": 0, "reused": 1797, "failed": 0}
