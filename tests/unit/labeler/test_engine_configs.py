"""Each engine's config dataclass takes its values from Settings, built in labeler/wiring.py, and
copies none of Settings' defaults (a copy drifts: the dispatcher once batched 64, Settings 128)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from labeler.settings import Settings
from labeler.wiring import (
    celery_config,
    dispatch_config,
    inference_limits,
    int8_bars,
    retrain_config,
    review_policy,
    training_config,
)
from tasks.contracts import CeleryConfig
from workers.dispatch import DispatchConfig
from workers.inference import EngineLimits
from workers.review import ReviewPolicy
from workers.training import GatePolicy, Int8Bars, RetrainConfig, TrainingConfig

BUILDERS: dict[type, Any] = {
    DispatchConfig: dispatch_config,
    CeleryConfig: celery_config,
    RetrainConfig: retrain_config,
    TrainingConfig: training_config,
    GatePolicy: lambda settings: retrain_config(settings).gate,
    Int8Bars: int8_bars,
    EngineLimits: inference_limits,
    ReviewPolicy: review_policy,
}


def _defaults(cls: type) -> dict[str, Any]:
    found = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            found[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            found[field.name] = field.default_factory()
    return found


@pytest.mark.parametrize("cls", BUILDERS, ids=lambda c: c.__name__)
def test_no_config_field_defaults_to_a_copy_of_a_setting(cls: type) -> None:
    built = BUILDERS[cls](Settings())
    from_settings = {f.name for f in dataclasses.fields(cls)} - set(_defaults(cls))
    assert from_settings, f"{cls.__name__} takes nothing from Settings"
    for name, default in _defaults(cls).items():
        # A default is internal tuning: no setting of the same name holds it.
        assert name not in Settings.model_fields, f"{cls.__name__}.{name} copies a setting"
        assert f"train_{name}" not in Settings.model_fields, f"{cls.__name__}.{name} copies one"
        assert getattr(built, name) == default


def test_the_builders_take_every_value_from_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    changed = {
        "BATCH_MAX_IMAGES": "7",
        "BATCH_MAX_WAIT_MS": "250",
        "EVENTS_LIST": "elsewhere",
        "BACKLOG_HIGH_WATER": "90",
        "BACKLOG_LOW_WATER": "30",
        "SCAN_INTERVAL_SECONDS": "12",
        "DEDUP_WINDOW_HOURS": "2",
        "IO_THREADS": "5",
        "DECODE_THREADS": "3",
        "MAX_OBJECT_BYTES": "4096",
        "MAX_IMAGE_PIXELS": "123456",
        "TRAIN_IMAGE_SIZE": "48",
        "TRAIN_MAX_EPOCHS": "3",
        "TRAIN_BATCH_SIZE": "8",
        "TRAIN_CACHE_DIR": str(tmp_path / "cache"),
        "TRAIN_CACHE_MAX_BYTES": str(2**21),
        "GATE_MIN_ACCURACY": "0.6",
        "GATE_MAX_RECALL_DROP": "0.2",
        "INT8_MIN_AGREEMENT": "0.9",
        "AUTO_LABEL_TARGET_PRECISION": "0.9",
        "INT8_CALIBRATION_IMAGES": "11",
        "RETRAIN_CRON": "5 3 * * *",
        "RETRAIN_EXPIRES_SECONDS": "600",
        "RETRY_BACKOFF_MAX_SECONDS": "9",
        "REVIEW_LEASE_SECONDS": "45",
        "REVIEW_ORDER": "oldest",
        "AUDIT_RATE": "0.5",
        "AUDIT_MIN_PER_CLASS": "7",
    }
    for name, value in changed.items():
        monkeypatch.setenv(f"LABELER_{name}", value)
    settings = Settings()

    dispatch = dispatch_config(settings)
    assert (dispatch.batch_max_images, dispatch.batch_max_wait) == (7, 0.25)
    assert (dispatch.events_list, dispatch.scan_interval, dispatch.dedup_ttl) == (
        "elsewhere",
        12.0,
        7200,
    )
    assert (dispatch.backlog_high_water, dispatch.backlog_low_water) == (90, 30)
    assert inference_limits(settings) == EngineLimits(5, 3, 4096, 123456)
    retrain = retrain_config(settings)
    assert retrain.training == training_config(settings)
    assert retrain.training.input_size == (48, 48)
    assert (retrain.training.max_epochs, retrain.training.batch_size) == (3, 8)
    assert retrain.cache_dir == (tmp_path / "cache").resolve()
    assert (retrain.cache_max_bytes, retrain.max_image_pixels) == (2**21, 123456)
    assert (retrain.gate.min_accuracy, retrain.target_precision) == (0.6, 0.9)
    assert retrain.gate.max_recall_drop == 0.2
    assert (retrain.int8.calibration_images, retrain.int8.min_agreement) == (11, 0.9)
    assert review_policy(settings) == ReviewPolicy(45.0, "oldest", 0.5, 7)
    celery = celery_config(settings)
    assert (celery.retrain_cron, celery.retrain_expires) == ("5 3 * * *", 600)
    assert celery.inference_retry_backoff_max == 9


def test_the_builders_follow_settings_defaults() -> None:
    settings = Settings()
    fields = Settings.model_fields

    assert dispatch_config(settings).batch_max_images == fields["batch_max_images"].default
    assert inference_limits(settings).io_threads == fields["io_threads"].default
    assert (
        retrain_config(settings).target_precision == fields["auto_label_target_precision"].default
    )
    assert celery_config(settings).retrain_cron == fields["retrain_cron"].default
