"""A real Prometheus scrapes a real prefork worker during a labeling run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from labeler.commands_review import review_desk
from labeler.observability import broker_health
from labeler.settings import load_settings, settings_from_env
from monitoring.exposition import MetricsServer
from storage import Area, LabelRecord, label_key
from testbed.digits import CLASSES
from testbed.processes import LABELER, DispatcherProcess, WorkerProcess, run_labeler, running_worker
from testbed.services import MotoServer, RedisServer, free_port, require_binary
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.monitoring.test_config import GRAFANA_VARIABLES, _all_queries, _metric_of
from tests.monitoring.test_config import _defined_metrics as defined_metrics
from tests.support.deployment import s3_deployment
from workers.review import Action

pytestmark = pytest.mark.slow

GOOD, BAD = 48, 2


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Prometheus:
    def __init__(self, workdir: Path, jobs: dict[str, str]) -> None:
        binary = require_binary("prometheus", "apt-get install -y prometheus")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        scrape = "".join(
            f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
            for job, target in jobs.items()
        )
        config.write_text(
            f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape}"
        )
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _get(f"{self.url}/-/ready")[0] == 200, 30, "prometheus ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> dict[str, Any]:
        status, body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer: dict[str, Any] = json.loads(body)
        answer["http_status"] = status
        return answer

    def value(self, promql: str) -> float | None:
        result = self.query(promql)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def scraped(
    redis_server: RedisServer,
    s3_server: MotoServer,
    digits: DigitsFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Prometheus, WorkerProcess, str]]:
    redis.Redis.from_url(redis_server.url).flushall()
    metrics_port, training_port, dispatch_port = free_port(), free_port(), free_port()
    review_port = free_port()
    stack = ExitStack()
    with s3_deployment(s3_server.endpoint_url, None, name="metrics") as site:
        env = site.env(
            redis_server.url,
            batch_max_images=4,
            inference_batch_size=4,
            metrics_port=metrics_port,
            train_image_size=32,
            train_max_epochs=2,
            train_fine_tune_epochs=1,
            scan_interval_seconds=1,
        )
        run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
        for i, sample in enumerate(digits.held_out[:GOOD]):
            site.incoming.put(f"m/{i}.png", sample.data)
        site.incoming.put("m/bad-1.jpg", b"not an image")
        site.incoming.put("m/bad-2.jpg", b"")
        training = site.area(Area.TRAINING)
        for sample in digits.held_out[GOOD:]:
            training.put(sample.key, sample.data)
        work = tmp_path_factory.mktemp("scrape")
        # Two prefork children share the work: the parent serves the sum of both.
        training_env = {**env, "LABELER_METRICS_PORT": str(training_port)}
        dispatch_env = {**env, "LABELER_METRICS_PORT": str(dispatch_port)}
        with (
            running_worker(env, work / "worker.log", "--concurrency", "2") as worker,
            running_worker(training_env, work / "training.log", "--queues", "training"),
        ):
            prometheus = Prometheus(
                work,
                {
                    "inference-worker": f"127.0.0.1:{metrics_port}",
                    "training-worker": f"127.0.0.1:{training_port}",
                    "dispatcher": f"127.0.0.1:{dispatch_port}",
                    "review": f"127.0.0.1:{review_port}",
                },
            )
            dispatcher = None
            try:
                wait_until(
                    lambda: worker.log_tail(100_000).count("loaded model digits v1") == 2,
                    120,
                    "both prefork children to load the model",
                )
                # The dispatcher's scan finds the images and sends them in batches of 4.
                dispatcher = DispatcherProcess(dispatch_env, work / "dispatch.log").start()
                wait_until(
                    lambda: sum(1 for _ in site.labels.list("m/")) == GOOD + BAD, 120, "every label"
                )
                run_labeler(env, "retrain", "--wait", "--timeout", "300")
                _review_app(env, review_port, work, stack)
                # Scrapes are asynchronous: wait until one has happened after the retrain.
                wait_until(
                    lambda: prometheus.value("count(labeler_evaluation_score)"), 60, "a scrape"
                )
                wait_until(
                    lambda: prometheus.value("count(labeler_review_agreement_ratio)"),
                    60,
                    "review app",
                )
                yield prometheus, worker, f"http://127.0.0.1:{metrics_port}"
            finally:
                if dispatcher is not None:
                    dispatcher.stop()
                stack.close()
                prometheus.stop()


def _review_app(env: dict[str, str], port: int, work: Path, stack: ExitStack) -> None:
    """`labeler review` with decisions made, so its per-class agreement series exist."""
    # The labels (and their audits) are v1's; the retrain may have promoted v2, which has none.
    run_labeler(env, "models", "promote", "1")
    with (work / "review.log").open("ab") as log:
        process = subprocess.Popen(
            [*LABELER, "review", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "review app")
    desk = review_desk(settings_from_env(env))
    stored = LabelRecord.model_validate_json(desk.labels.get(label_key("m/0.png")).data)
    # As if the model were unsure (and so not an audit).
    record = stored.model_copy(update={"needs_review": True, "audit": None})
    desk.labels.put(label_key("m/0.png"), record.model_dump_json(exclude_none=True).encode())
    desk.queue.add(record)
    decided = 0
    # The rest of the queue is audits (the first labels of each class): their series exist
    # once one is decided.
    while (item := desk.next_item()) is not None:
        desk.decide(item.record.source_key, item.claim.token, Action.ACCEPT, "scrape-test")
        decided += 1
    assert decided > 1


def test_counters_equal_the_images_processed(
    scraped: tuple[Prometheus, WorkerProcess, str],
) -> None:
    prometheus, worker, _ = scraped
    labeled = 'sum(labeler_images_processed_total{outcome="labeled"})'
    wait_until(lambda: prometheus.value(labeled) == GOOD, 60, f"{GOOD} labeled in Prometheus")
    errors = 'sum by (reason) (labeler_images_processed_total{outcome="error"})'
    by_reason = {
        r["metric"]["reason"]: float(r["value"][1])
        for r in prometheus.query(errors)["data"]["result"]
    }
    assert by_reason == {"not_an_image": 1.0, "empty": 1.0}
    assert prometheus.value('sum(labeler_batches_total{outcome="ok"})') == math.ceil(
        (GOOD + BAD) / 4
    )
    assert prometheus.value('sum(labeler_stage_duration_seconds_count{stage="infer"})') >= 12
    scanned = 'sum(labeler_events_total{job="dispatcher",source="scan",outcome="queued"})'
    wait_until(lambda: prometheus.value(scanned) == GOOD + BAD, 30, "the dispatcher's count")
    # Both prefork children did part of the work, and the totals are their sum.
    done = [line for line in worker.log_tail(200_000).splitlines() if "succeeded in" in line]
    assert {"ForkPoolWorker-1", "ForkPoolWorker-2"} <= set(
        re.findall(r"ForkPoolWorker-\d+", "\n".join(done))
    )


def test_every_dashboard_and_alert_query_parses_and_names_scraped_metrics(
    scraped: tuple[Prometheus, WorkerProcess, str],
) -> None:
    prometheus, _, _ = scraped
    wait_until(lambda: prometheus.value("sum(labeler_images_processed_total)"), 60, "a scrape")
    names = prometheus.query('group by (__name__) ({__name__=~"labeler_.+"})')["data"]["result"]
    scraped_names = {r["metric"]["__name__"] for r in names}
    defined = defined_metrics()
    for where, expr in _all_queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        answer = prometheus.query(expr)
        assert answer["status"] == "success", f"{where}: {expr}: {answer}"
        for series in set(re.findall(r"\blabeler_[a-z_]+", expr)):
            base = _metric_of(series, defined)
            family = {base, f"{base}_bucket", f"{base}_count"}
            assert family & scraped_names, f"{where}: {series} was never scraped"


def test_exposition_passes_promtool_check_metrics(
    scraped: tuple[Prometheus, WorkerProcess, str],
) -> None:
    _, _, endpoint = scraped
    status, text = _get(f"{endpoint}/metrics")
    assert status == 200
    promtool = require_binary("promtool", "apt-get install -y prometheus")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "", check.stdout
    assert _get(f"{endpoint}/healthz") == (200, "ok\n")


def test_healthz_is_503_when_the_broker_does_not_answer() -> None:
    port = free_port()
    settings = load_settings(broker_url=f"redis://127.0.0.1:{port}/0")
    problem = broker_health(settings)
    assert problem is not None
    assert problem.startswith("broker unreachable: ")
    assert f"127.0.0.1:{port}" in problem  # says which broker, never a password
    from prometheus_client import CollectorRegistry

    server = MetricsServer(0, CollectorRegistry(), lambda: broker_health(settings)).start()
    try:
        status, body = _get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()
    assert status == 503
    assert "broker unreachable" in body
