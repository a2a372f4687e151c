from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labeler.readme_tables import (
    BEGIN,
    END,
    ERRORS_BEGIN,
    ERRORS_END,
    errors_markdown_table,
    markdown_table,
)
from labeler.settings import ConfigError, load_settings
from storage import Area

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LABELER_"):
            monkeypatch.delenv(name)


def test_defaults_use_the_local_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.area_uri(Area.LABELS) == (tmp_path / "labels").as_uri()
    assert not settings.uses_s3()


def test_areas_follow_storage_uri_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_STORAGE_URI", "s3://bucket/root")
    monkeypatch.setenv("LABELER_REPORTS_URI", "s3://other-bucket/rep")
    settings = load_settings()
    assert settings.area_uri(Area.INCOMING) == "s3://bucket/root/incoming"
    assert settings.area_uri(Area.REPORTS) == "s3://other-bucket/rep"
    assert settings.uses_s3()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LABELER_BATCH_MAX_IMAGES", "0", "LABELER_BATCH_MAX_IMAGES: Input should be greater"),
        ("LABELER_BATCH_MAX_IMAGES", "lots", "LABELER_BATCH_MAX_IMAGES: Input should be a valid"),
        ("LABELER_BROKER_URL", "amqp://x", "LABELER_BROKER_URL: must be redis://"),
        ("LABELER_STORAGE_URI", "ftp://x", "LABELER_STORAGE_URI: 'ftp://x': expected s3://"),
        ("LABELER_RETRAIN_CRON", "0 2 * *", "LABELER_RETRAIN_CRON: must have 5 fields"),
        ("LABELER_RETRAIN_CRON", "0 25 * * *", "LABELER_RETRAIN_CRON: is not a valid cron"),
        ("LABELER_MODEL_NAME", "Bad Name", "LABELER_MODEL_NAME: String should match"),
        ("LABELER_S3_ENDPOINT_URL", "minio:9000", "LABELER_S3_ENDPOINT_URL: must be an http"),
        (
            "LABELER_EVENTS_SQS_URL",
            "arn:aws:sqs:eu-west-1:1:q",
            "LABELER_EVENTS_SQS_URL: must be the queue's URL",
        ),
        (
            "LABELER_EVENTS_SQS_URL",
            "http://127.0.0.1:5000",
            "LABELER_EVENTS_SQS_URL: names an endpoint, not a queue",
        ),
        (
            "LABELER_EVENTS_SQS_ENDPOINT_URL",
            "localhost:9324",
            "LABELER_EVENTS_SQS_ENDPOINT_URL: must be an http",
        ),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings()
    assert expected in str(info.value)


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_S3_ACCESS_KEY_ID", "AKIAVISIBLE")
    monkeypatch.setenv("LABELER_S3_SECRET_ACCESS_KEY", "sekrit-s3-value")
    monkeypatch.setenv("LABELER_REDIS_PASSWORD", "sekrit-redis-value")
    settings = load_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "sekrit" not in text
        assert "AKIAVISIBLE" not in text
    assert "sekrit-redis-value" in settings.broker_connection_url()
    assert settings.s3_options().secret_access_key == "sekrit-s3-value"
    assert "sekrit" not in repr(settings.s3_options())


def test_password_in_broker_url_is_refused_and_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_BROKER_URL", "redis://:hunter2@redis:6379/0")
    with pytest.raises(ConfigError, match="LABELER_REDIS_PASSWORD") as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_half_s3_credentials_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_S3_ACCESS_KEY_ID", "only-the-id")
    with pytest.raises(ConfigError, match="set both LABELER_S3_ACCESS_KEY_ID"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "LABELER_INFERENCE_VISIBILITY_TIMEOUT_SECONDS",
            "360",  # the 300 s time limit plus the 60 s retry backoff cap
            "LABELER_INFERENCE_VISIBILITY_TIMEOUT_SECONDS (360) must exceed the longest time a "
            "task can stay reserved (360 s",
        ),
        (
            "LABELER_TRAINING_TIME_LIMIT_SECONDS",
            "7200",
            "LABELER_VISIBILITY_TIMEOUT_SECONDS (7200) must exceed the longest time a task can "
            "stay reserved (7200 s",
        ),
    ],
)
def test_a_visibility_timeout_a_task_can_outlast_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in str(info.value)


def test_visibility_timeouts_that_outlast_every_task_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABELER_INFERENCE_VISIBILITY_TIMEOUT_SECONDS", "361")
    monkeypatch.setenv("LABELER_TRAINING_TIME_LIMIT_SECONDS", "7199")
    settings = load_settings()
    assert (settings.inference_visibility_timeout_seconds, settings.visibility_timeout_seconds) == (
        361,
        7200,
    )


def test_cli_exits_2_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"LABELER_BATCH_MAX_IMAGES": "-1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "labeler", "config"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "LABELER_BATCH_MAX_IMAGES" in result.stderr


def test_readme_configuration_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    assert readme[start:end] == markdown_table(), "run `labeler config --markdown` into README"


def test_readme_error_table_matches_the_error_family() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(ERRORS_BEGIN), readme.index(ERRORS_END) + len(ERRORS_END)
    table = errors_markdown_table()
    assert readme[start:end] == table, "run `labeler config --errors-markdown` into README"
    assert "| `ModelUnavailable` | transient |" in table
    assert "| `ImageRejected` | permanent |" in table
