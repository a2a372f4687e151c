"""Renamed variables (old names still read, with a warning) and the settings a data directory
remembers in ``labeler.json``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labeler.settings import ConfigError, load_settings, settings_from_env
from labeler.settings_sources import DATA_DIR_SETTINGS, read_remembered, remember
from storage import LabelRecord


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LABELER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default data dir, ./data, holds no labeler.json


@pytest.mark.parametrize(
    ("old", "new", "field", "value", "expected"),
    [
        ("LABELER_PRECISION", "LABELER_SERVING_FORMAT", "serving_format", "int8", "int8"),
        (
            "LABELER_TRAIN_PRECISION",
            "LABELER_TRAIN_DTYPE_POLICY",
            "train_dtype_policy",
            "mixed_bfloat16",
            "mixed_bfloat16",
        ),
        (
            "LABELER_REVIEW_PRECISION",
            "LABELER_AUTO_LABEL_TARGET_PRECISION",
            "auto_label_target_precision",
            "0.9",
            0.9,
        ),
    ],
)
def test_an_old_name_sets_the_value_and_warns_naming_the_new_one(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str, field: str, value: str, expected: object
) -> None:
    monkeypatch.setenv(old, value)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: set {new} instead"):
        settings = load_settings()
    assert getattr(settings, field) == expected
    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(settings_from_env({old: value}), field) == expected


def test_with_both_names_set_the_new_one_wins_and_the_old_is_said_to_be_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABELER_PRECISION", "int8")
    monkeypatch.setenv("LABELER_SERVING_FORMAT", "fp32")
    with pytest.warns(DeprecationWarning, match="LABELER_PRECISION is ignored"):
        assert load_settings().serving_format == "fp32"


def test_a_bad_value_under_an_old_name_names_the_new_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABELER_PRECISION", "fp16")
    with (
        pytest.warns(DeprecationWarning, match="LABELER_PRECISION"),
        pytest.raises(ConfigError) as caught,
    ):
        load_settings()
    assert "LABELER_SERVING_FORMAT" in str(caught.value)


def test_a_data_directory_remembers_settings_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "demo"
    data.mkdir()
    remember(data, model_name="digits", private_redis=True)
    assert read_remembered(data) == {"model_name": "digits", "private_redis": True}

    given = load_settings(data_dir=data)  # as `--data-dir` passes it
    assert (given.model_name, given.private_redis) == ("digits", True)
    assert load_settings(data_dir=tmp_path).model_name == "default"  # another directory
    monkeypatch.setenv("LABELER_DATA_DIR", str(data))
    assert load_settings().model_name == "digits"
    assert settings_from_env({"LABELER_DATA_DIR": str(data)}).model_name == "digits"
    monkeypatch.setenv("LABELER_MODEL_NAME", "cats")
    assert load_settings().model_name == "cats"


def test_a_remembered_value_is_validated_like_any_other(tmp_path: Path) -> None:
    remember(tmp_path, model_name="Bad Name")
    with pytest.raises(ConfigError, match="LABELER_MODEL_NAME"):
        load_settings(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"modle_name": "digits"}', "modle_name cannot be remembered"),
        ('{"data_dir": "/elsewhere"}', "data_dir cannot be remembered"),
        ("[1, 2]", "must hold one JSON object"),
        ("{not json", "cannot read"),
    ],
)
def test_a_bad_settings_file_says_what_is_wrong(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / DATA_DIR_SETTINGS).write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_settings(data_dir=tmp_path)


def test_a_record_written_before_the_rename_still_loads() -> None:
    old = (
        '{"source_key": "a.png", "model_name": "digits", "model_version": 1, "created_at": 1.0,'
        ' "runtime": "openvino", "precision": "int8"}'
    )
    record = LabelRecord.model_validate_json(old)
    assert record.serving_format == "int8"
    assert '"serving_format":"int8"' in record.model_dump_json()
    assert LabelRecord.model_validate_json(record.model_dump_json()) == record
