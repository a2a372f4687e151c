"""``labeler classify FILE...``: the worker's engine over local files, records on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage import LocalStore
from storage.registry import ModelRegistry
from testbed.digits import register_digits
from testbed.processes import labeler_env, run_labeler
from tests.conftest import DigitsFixture

pytestmark = pytest.mark.slow


def test_classify_prints_one_record_per_file_in_order_with_the_workers_limits(
    digits: DigitsFixture, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    register_digits(ModelRegistry(LocalStore(data_dir / "models"), "digits"), digits.model_path)
    files = []
    for sample in digits.held_out[:40]:
        path = tmp_path / "in" / f"{sample.key.replace('/', '_')}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(sample.data)
        files.append(path)
    not_image = tmp_path / "in" / "notes.png"
    not_image.write_text("not an image at all")
    too_big = tmp_path / "in" / "big.png"
    too_big.write_bytes(digits.held_out[0].data + b"\0" * 5000)
    names = [str(p) for p in [*files[:20], not_image, too_big, *files[20:]]]

    result = run_labeler(
        labeler_env(
            data_dir=data_dir,
            model_name="digits",
            max_object_bytes=4000,  # the digit PNGs are ~300 bytes; big.png is over
            batch_max_images=16,  # several engine batches, so order across chunks counts
        ),
        "classify",
        *names,
    )

    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source_key"] for r in records] == names
    by_key = {r["source_key"]: r for r in records}
    assert by_key[str(not_image)]["error"]["reason"] == "not_an_image"
    assert by_key[str(too_big)]["error"]["reason"] == "too_large"
    labeled = [by_key[str(p)] for p in files]
    assert all("error" not in r and r["model_version"] == 1 for r in labeled)
    truth = {str(p): s.label for p, s in zip(files, digits.held_out, strict=False)}
    correct = sum(r["label"] == truth[r["source_key"]] for r in labeled)
    assert correct >= 36, f"{correct} of 40 digits right"
