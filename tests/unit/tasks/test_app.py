"""The Celery app's wiring, without a broker: routes and retries come from the contracts and the
error family, and building apps does not pile up signal handlers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from celery.signals import task_retry, worker_process_init, worker_process_shutdown

from labeler.settings import Settings
from labeler.wiring import celery_config
from storage import PermanentError, TransientError, error_classes
from tasks.app import create_app
from tasks.contracts import (
    CHECK_LABELS,
    CLASSIFY_BATCH,
    RELABEL,
    RETRAIN,
    TASK_QUEUES,
    ClassifyBatchRequest,
    InvalidPayload,
    parse_payload,
)
from tasks.inference import RETRIED
from workers.inference import ModelUnavailable

CONFIG = replace(
    celery_config(Settings()),
    broker_url="redis://127.0.0.1:1/0",
    result_backend="redis://127.0.0.1:1/0",
)


def no_engines() -> Any:
    raise AssertionError("a producer app never builds engines")


def test_building_apps_connects_the_worker_hooks_once() -> None:
    signals = (worker_process_init, worker_process_shutdown, task_retry)
    create_app(CONFIG, no_engines)
    before = [len(s.receivers) for s in signals]
    for _ in range(3):
        create_app(CONFIG, no_engines, frozenset({"inference"}))
    assert [len(s.receivers) for s in signals] == before


def test_routes_queues_and_retries_come_from_one_definition() -> None:
    app = create_app(CONFIG, no_engines)
    for task, queue in TASK_QUEUES.items():
        assert app.conf.task_routes[task] == {"queue": queue}
        # A batch is also retried when Redis (its review index, its audit counts) is down.
        retried = RETRIED if task == CLASSIFY_BATCH else (TransientError,)
        assert app.tasks[task].autoretry_for == retried
    assert app.conf.beat_schedule["nightly-retrain"]["options"]["queue"] == TASK_QUEUES[RETRAIN]
    assert set(TASK_QUEUES) == {CLASSIFY_BATCH, RETRAIN, CHECK_LABELS, RELABEL}


def test_an_inference_worker_reads_relabel_only_when_inference_is_empty() -> None:
    both = create_app(CONFIG, no_engines, frozenset({"inference", "relabel"}))
    options = both.conf.broker_transport_options
    assert options["queue_order_strategy"] == "priority"
    assert options["unacked_key"] == "unacked:inference"  # still its own short-timeout hash
    assert options["visibility_timeout"] == CONFIG.inference_visibility_timeout
    alone = create_app(CONFIG, no_engines, frozenset({"inference"})).conf
    assert "queue_order_strategy" not in alone.broker_transport_options


def test_the_error_family_splits_by_what_to_do() -> None:
    assert issubclass(ModelUnavailable, TransientError)
    assert issubclass(InvalidPayload, PermanentError)
    transient = {e.__name__ for e in error_classes(TransientError)}
    assert {"TransientStorageError", "ModelUnavailable"} <= transient
    assert not transient & {e.__name__ for e in error_classes(PermanentError)}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ([], "payload must be a JSON object, got list"),
        ({"batch_id": "b", "keys": []}, "keys: List should have at least 1 item"),
        ({"batch_id": "b", "keys": ["../x.jpg"]}, "keys:"),
        ({"batch_id": "b", "keys": ["a.jpg"], "pickle": 1}, "pickle: Extra inputs"),
    ],
)
def test_a_bad_payload_says_what_is_wrong(payload: Any, problem: str) -> None:
    with pytest.raises(InvalidPayload, match="ClassifyBatchRequest") as caught:
        parse_payload(ClassifyBatchRequest, payload)
    assert problem in str(caught.value)


class _Lock:
    def acquire(self, blocking: bool) -> bool:
        return True

    def release(self) -> None:
        pass


class _PromotingEngines:
    """Engines whose retrainer promotes v7 and whose relabeler lists three pending keys."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        from monitoring.metrics import Metrics

        self.metrics = Metrics(CollectorRegistry())
        self.model_name = "m"
        self.redis = self
        self.retrainer = self
        self.relabeler = self

    def lock(self, name: str, timeout: int) -> _Lock:
        return _Lock()

    def run(self, progress: Any) -> Any:
        from workers.training import RetrainOutcome

        return RetrainOutcome(7, True, [], 0.9, 0.9, 6, 1.0)

    def keys(self, prefix: str, *, pending_only: bool) -> list[str]:
        return [f"k{n}.png" for n in range(3)] if pending_only else []


@pytest.mark.parametrize(("setting", "sent"), [("pending", 1), ("all", 1), ("off", 0)])
def test_a_promoting_retrain_queues_the_relabel_the_setting_asks_for(
    setting: str, sent: int
) -> None:
    engines = _PromotingEngines()
    app = create_app(replace(CONFIG, relabel_on_promote=setting), lambda: engines)  # type: ignore[arg-type]
    calls: list[tuple[str, dict[str, Any], str]] = []
    app.send_task = lambda name, kwargs, queue: calls.append((name, kwargs, queue))  # type: ignore[method-assign]

    assert app.tasks[RETRAIN].run()["outcome"] == "promoted"

    assert len(calls) == sent
    if sent:
        name, kwargs, queue = calls[0]
        assert (name, queue) == (RELABEL, "relabel")
        assert kwargs["payload"] | {"keys": None} == {
            "model_version": 7,
            "scope": setting,
            "prefix": "",
            "keys": None,
        }
        calls.clear()
        planned = app.tasks[RELABEL].run(kwargs["payload"])  # the plan fans out keyed tasks
        assert planned == {"planned_tasks": 1 if setting == "pending" else 0}
        assert [c[1]["payload"]["keys"] for c in calls] == (
            [["k0.png", "k1.png", "k2.png"]] if setting == "pending" else []
        )
