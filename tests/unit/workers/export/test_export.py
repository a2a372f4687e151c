"""The export engine in-process: each format's rows, the filters, atomic output, hard links."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import (
    ErrorReason,
    LabelRecord,
    LocalStore,
    ObjectStore,
    RecordError,
    Review,
    ReviewOutcome,
    label_key,
)
from tests.support.memory_store import MemoryStore
from workers.export import (
    CSV_COLUMNS,
    METADATA_FILE,
    Destination,
    ExportError,
    ExportFilter,
    ExportFormat,
    LabelExporter,
    export_row,
    manifest_line,
)

URI = "s3://bucket/root/incoming"


def _record(key: str, **fields: Any) -> LabelRecord:
    values: dict[str, Any] = {
        "source_key": key,
        "source_etag": "e",
        "model_name": "digits",
        "model_version": 3,
        "label": "7",
        "score": 0.62,
        "created_at": 1_700_000_000.0,
    }
    values.update(fields)
    return LabelRecord(**values)


def _review(outcome: ReviewOutcome, label: str | None) -> Review:
    return Review(label=label, outcome=outcome, reviewer="ana", at=1_710_000_000.0)


# Five kinds of record, one each: what a person decided is exactly the reviewed ones.
RECORDS = {
    "a/auto.png": _record("a/auto.png", score=0.93),
    "a/agreed.png": _record("a/agreed.png", review=_review(ReviewOutcome.AGREED, "7")),
    "b/corrected.png": _record("b/corrected.png", review=_review(ReviewOutcome.CORRECTED, "1")),
    "b/discarded.png": _record("b/discarded.png", review=_review(ReviewOutcome.DISCARDED, None)),
    "c/broken.png": _record(
        "c/broken.png",
        label=None,
        score=None,
        error=RecordError(reason=ErrorReason.UNREADABLE, detail="bad"),
    ),
}
HUMAN = {"a/agreed.png", "b/corrected.png", "b/discarded.png"}


@pytest.fixture
def stores() -> tuple[MemoryStore, MemoryStore]:
    labels, incoming = MemoryStore(), MemoryStore()
    for key, record in RECORDS.items():
        labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())
        incoming.put(key, f"image {key}".encode())
    return labels, incoming


def _export(
    labels: ObjectStore, incoming: ObjectStore, fmt: ExportFormat, out: Path, **keep: Any
) -> Any:
    return LabelExporter(labels, incoming).export(fmt, Destination(str(out)), ExportFilter(**keep))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_reviewer_class_wins_and_is_marked_human() -> None:
    line = manifest_line(export_row(RECORDS["b/corrected.png"], URI))

    assert line["source-ref"] == f"{URI}/b/corrected.png"
    assert line["label"] == "1"
    meta = line["label-metadata"]
    assert meta["class-name"] == "1"
    assert meta["human-annotated"] == "yes"
    assert meta["review-outcome"] == "corrected"
    assert meta["confidence"] == 1.0
    assert meta["model-name"] == "digits"
    assert meta["model-version"] == 3
    assert meta["creation-date"] == "2024-03-09T16:00:00.000000+00:00"  # when the person decided


def test_a_model_label_keeps_its_score_and_is_not_human() -> None:
    line = manifest_line(export_row(RECORDS["a/auto.png"], URI, audit=True))

    assert line["label"] == "7"
    meta = line["label-metadata"]
    assert meta["confidence"] == 0.93
    assert meta["human-annotated"] == "no"
    assert meta["review-outcome"] is None
    assert meta["audit"] is True
    assert meta["creation-date"] == "2023-11-14T22:13:20.000000+00:00"


def test_an_error_record_is_source_and_reason_only() -> None:
    line = manifest_line(export_row(RECORDS["c/broken.png"], URI))

    assert line == {"source-ref": f"{URI}/c/broken.png", "error": "unreadable"}


def test_a_discarded_image_has_no_label_and_says_discarded() -> None:
    line = manifest_line(export_row(RECORDS["b/discarded.png"], URI))

    assert "label" not in line
    assert line["label-metadata"]["class-name"] is None
    assert line["label-metadata"]["review-outcome"] == "discarded"
    assert line["label-metadata"]["human-annotated"] == "yes"


def test_a_local_source_ref_is_an_escaped_file_uri() -> None:
    row = export_row(_record("my photos/#1.png"), "file:///data/incoming")

    assert row.source_ref == "file:///data/incoming/my%20photos/%231.png"


def test_jsonl_has_one_line_per_record_human_exactly_where_a_person_decided(
    stores: tuple[MemoryStore, MemoryStore], tmp_path: Path
) -> None:
    counts = _export(*stores, ExportFormat.JSONL, tmp_path / "out.jsonl")

    lines = _jsonl(tmp_path / "out.jsonl")
    assert len(lines) == len(RECORDS) == counts.kept
    human = {
        line["source-ref"].removeprefix("memory:/")
        for line in lines
        if line.get("label-metadata", {}).get("human-annotated") == "yes"
    }
    assert human == HUMAN
    assert counts.errors == 1


def test_csv_is_the_same_flattened_with_a_header(
    stores: tuple[MemoryStore, MemoryStore], tmp_path: Path
) -> None:
    _export(*stores, ExportFormat.CSV, tmp_path / "out.csv")

    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_key = {row["source-ref"].removeprefix("memory:/"): row for row in rows}
    assert set(by_key) == set(RECORDS)
    assert {k for k, row in by_key.items() if row["human-annotated"] == "yes"} == HUMAN
    assert by_key["b/corrected.png"]["label"] == "1"
    assert by_key["b/corrected.png"]["reviewer"] == "ana"
    assert by_key["c/broken.png"]["error"] == "unreadable"
    assert by_key["c/broken.png"]["label"] == ""
    assert by_key["a/auto.png"]["confidence"] == "0.93"


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ({"prefix": "b/"}, {"b/corrected.png", "b/discarded.png"}),
        ({"reviewed_only": True}, HUMAN),
        # A person's class counts as certain; errors and discards have no confidence at all.
        ({"min_confidence": 0.9}, {"a/auto.png", "a/agreed.png", "b/corrected.png"}),
        ({"min_confidence": 0.95}, {"a/agreed.png", "b/corrected.png"}),
    ],
)
def test_filters(
    stores: tuple[MemoryStore, MemoryStore], tmp_path: Path, keep: Any, expected: set[str]
) -> None:
    counts = _export(*stores, ExportFormat.JSONL, tmp_path / "out.jsonl", **keep)

    keys = {line["source-ref"].removeprefix("memory:/") for line in _jsonl(tmp_path / "out.jsonl")}
    assert keys == expected
    assert counts.filtered == (len(RECORDS) - len(expected) if "prefix" not in keep else 0)


def test_since_reads_only_records_changed_since(tmp_path: Path) -> None:
    now = [1000.0]
    labels, incoming = MemoryStore(clock=lambda: now[0]), MemoryStore()
    for n, key in enumerate(["old.png", "new.png"]):
        now[0] = 1000.0 + 100 * n
        labels.put(label_key(key), _record(key).model_dump_json().encode())

    _export(labels, incoming, ExportFormat.JSONL, tmp_path / "o.jsonl", since=1050.0)

    assert [line["source-ref"] for line in _jsonl(tmp_path / "o.jsonl")] == ["memory:/new.png"]
    assert labels.keys_read == ["new.png.json"]  # the old record was never read


def test_audit_is_read_from_the_record_json(tmp_path: Path) -> None:
    labels = MemoryStore()
    raw = json.loads(_record("x.png").model_dump_json())
    labels.put("x.png.json", json.dumps({**raw, "audit": True}).encode())

    _export(labels, MemoryStore(), ExportFormat.JSONL, tmp_path / "o.jsonl")

    assert _jsonl(tmp_path / "o.jsonl")[0]["label-metadata"]["audit"] is True


def test_objects_that_are_not_records_are_counted_not_exported(tmp_path: Path) -> None:
    labels = MemoryStore()
    labels.put("junk.png.json", b"not json")
    labels.put("x.png.json", _record("x.png").model_dump_json().encode())

    counts = _export(labels, MemoryStore(), ExportFormat.JSONL, tmp_path / "o.jsonl")

    assert (counts.read, counts.kept, counts.unreadable) == (2, 1, 1)


def test_imagefolder_from_another_store_copies_images_and_lists_them(
    stores: tuple[MemoryStore, MemoryStore], tmp_path: Path
) -> None:
    out = tmp_path / "folder"
    counts = _export(*stores, ExportFormat.IMAGEFOLDER, out)

    meta = {line["file_name"]: line for line in _jsonl(out / METADATA_FILE)}
    assert set(meta) == {"7/a/auto.png", "7/a/agreed.png", "1/b/corrected.png"}
    for name, line in meta.items():
        assert (out / name).read_bytes() == f"image {name.split('/', 1)[1]}".encode()
        assert line["label"] == name.split("/")[0]
    assert meta["1/b/corrected.png"]["human_annotated"] is True
    assert meta["7/a/auto.png"]["human_annotated"] is False
    assert counts.skipped == {"no_class": 2}  # the error and the discarded image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no temporary left


def test_imagefolder_on_a_local_store_hard_links(tmp_path: Path) -> None:
    labels, incoming = MemoryStore(), LocalStore(tmp_path / "incoming")
    incoming.put("cats/1.png", b"png bytes")
    labels.put("cats/1.png.json", _record("cats/1.png").model_dump_json().encode())
    labels.put("cats/gone.png.json", _record("cats/gone.png").model_dump_json().encode())

    counts = _export(labels, incoming, ExportFormat.IMAGEFOLDER, tmp_path / "out")

    linked = tmp_path / "out" / "7" / "cats" / "1.png"
    assert os.stat(linked).st_ino == os.stat(tmp_path / "incoming" / "cats" / "1.png").st_ino
    assert counts.skipped == {"image_missing": 1}
    assert [line["file_name"] for line in _jsonl(tmp_path / "out" / METADATA_FILE)] == [
        "7/cats/1.png"
    ]


def test_imagefolder_refuses_a_folder_with_something_in_it(
    stores: tuple[MemoryStore, MemoryStore], tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")

    with pytest.raises(ExportError, match="exists"):
        _export(*stores, ExportFormat.IMAGEFOLDER, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


class _FailingLabels(MemoryStore):
    """Fails on the n-th record read, as a store that goes away mid-export."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def list(self, prefix: str = "", **kwargs: Any) -> Iterator[Any]:
        for n, info in enumerate(super().list(prefix, **kwargs)):
            if n == self.fail_at:
                raise OSError("store went away")
            yield info


@pytest.mark.parametrize("fmt", [ExportFormat.JSONL, ExportFormat.CSV, ExportFormat.IMAGEFOLDER])
def test_a_failed_export_leaves_the_previous_output_and_no_temporary(
    tmp_path: Path, fmt: ExportFormat
) -> None:
    labels = _FailingLabels(fail_at=300)  # past the first chunk: some output was written
    for n in range(400):
        labels.put(f"{n:04d}.png.json", _record(f"{n:04d}.png").model_dump_json().encode())
    out = tmp_path / "out"
    if fmt is not ExportFormat.IMAGEFOLDER:
        out.write_text("previous export\n")

    with pytest.raises(OSError, match="went away"):
        _export(labels, MemoryStore(), fmt, out)

    if fmt is ExportFormat.IMAGEFOLDER:
        assert list(tmp_path.iterdir()) == []
    else:
        assert out.read_text() == "previous export\n"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
