"""`labeler export` as a user runs it: a subprocess over a local data directory and over a real S3
endpoint (moto), writing to a local path and to s3://."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from storage import (
    ErrorReason,
    LabelRecord,
    LocalStore,
    ObjectStore,
    RecordError,
    Review,
    ReviewOutcome,
    S3Store,
    label_key,
)
from storage.s3 import S3Client
from testbed.processes import TEST_CREDENTIALS, labeler_env, run_labeler
from testbed.services import MotoServer

DECIDED = {  # source key -> (outcome, reviewer's class)
    "cats/agreed.png": (ReviewOutcome.AGREED, "cat"),
    "cats/corrected.png": (ReviewOutcome.CORRECTED, "dog"),
    "dogs/discarded.png": (ReviewOutcome.DISCARDED, None),
}
AUTO = ["cats/auto.png", "dogs/auto.png"]
BROKEN = "dogs/broken.png"


def _fill(incoming: ObjectStore, labels: ObjectStore) -> None:
    """Images and records: two auto labels, three decisions, one error."""
    for key in [*AUTO, *DECIDED, BROKEN]:
        incoming.put(key, f"bytes of {key}".encode())
        record = LabelRecord(
            source_key=key,
            source_etag="e",
            model_name="digits",
            model_version=2,
            label="cat",
            score=0.55,
            needs_review=key in DECIDED,
            created_at=1_700_000_000.0,
        )
        if key in DECIDED:
            outcome, label = DECIDED[key]
            record.review = Review(label=label, outcome=outcome, reviewer="ana", at=1.71e9)
        if key == BROKEN:
            record = LabelRecord(
                source_key=key,
                model_name="digits",
                model_version=2,
                error=RecordError(reason=ErrorReason.NOT_AN_IMAGE, detail="text"),
                created_at=1_700_000_000.0,
            )
        labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())


def _check_manifest(lines: list[dict[str, Any]], incoming_uri: str) -> None:
    by_key = {line["source-ref"].removeprefix(incoming_uri + "/"): line for line in lines}
    assert set(by_key) == {*AUTO, *DECIDED, BROKEN}
    human = {k: v.get("label-metadata", {}).get("human-annotated") for k, v in by_key.items()}
    assert {k for k, said in human.items() if said == "yes"} == set(DECIDED)
    assert {k for k, said in human.items() if said == "no"} == set(AUTO)
    assert by_key["cats/corrected.png"]["label"] == "dog"  # the reviewer's class, not the model's
    assert "label" not in by_key["dogs/discarded.png"]
    assert by_key[BROKEN] == {"source-ref": f"{incoming_uri}/{BROKEN}", "error": "not_an_image"}


def test_local_store_all_three_formats(tmp_path: Path) -> None:
    data = tmp_path / "data"
    incoming, labels = LocalStore(data / "incoming"), LocalStore(data / "labels")
    _fill(incoming, labels)
    env = labeler_env(data_dir=data)

    run_labeler(env, "export", "--format", "jsonl", "--out", str(tmp_path / "out.jsonl"))
    run_labeler(env, "export", "--format", "csv", "--out", str(tmp_path / "out.csv"))
    done = run_labeler(
        env,
        "export",
        "--format",
        "imagefolder",
        "--out",
        str(tmp_path / "folder"),
        "--prefix",
        "cats/",
    )

    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    _check_manifest(lines, incoming.uri)
    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    human = {
        r["source-ref"].removeprefix(incoming.uri + "/")
        for r in rows
        if r["human-annotated"] == "yes"
    }
    assert human == set(DECIDED)
    meta = [json.loads(line) for line in (tmp_path / "folder" / "metadata.jsonl").open()]
    assert sorted(m["file_name"] for m in meta) == [
        "cat/cats/agreed.png",
        "cat/cats/auto.png",
        "dog/cats/corrected.png",
    ]
    image = tmp_path / "folder" / "dog" / "cats" / "corrected.png"
    assert os.stat(image).st_ino == os.stat(data / "incoming" / "cats" / "corrected.png").st_ino
    assert "exported 3 records" in done.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_s3_store_and_s3_output(
    tmp_path: Path, s3_server: MotoServer, s3_client: S3Client, bucket: str
) -> None:
    incoming = S3Store(s3_client, bucket, "labeler/incoming")
    _fill(incoming, S3Store(s3_client, bucket, "labeler/labels"))
    env = labeler_env(
        data_dir=tmp_path,
        storage_uri=f"s3://{bucket}/labeler",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=TEST_CREDENTIALS["access_key_id"],
        s3_secret_access_key=TEST_CREDENTIALS["secret_access_key"],
    )

    run_labeler(env, "export", "--format", "jsonl", "--out", f"s3://{bucket}/exports/all.jsonl")
    run_labeler(
        env, "export", "--format", "csv", "--reviewed-only", "--out", f"s3://{bucket}/exports/r.csv"
    )
    run_labeler(env, "export", "--format", "imagefolder", "--out", f"s3://{bucket}/exports/folder")

    exports = S3Store(s3_client, bucket, "exports")
    text = exports.get("all.jsonl").data.decode()
    _check_manifest([json.loads(line) for line in text.splitlines()], incoming.uri)
    rows = list(csv.DictReader(io.StringIO(exports.get("r.csv").data.decode())))
    assert len(rows) == len(DECIDED)
    assert {r["human-annotated"] for r in rows} == {"yes"}
    meta = [json.loads(line) for line in exports.get("folder/metadata.jsonl").data.splitlines()]
    names = sorted(m["file_name"] for m in meta)
    assert names == [
        "cat/cats/agreed.png",
        "cat/cats/auto.png",
        "cat/dogs/auto.png",
        "dog/cats/corrected.png",
    ]
    for name in names:
        source = name.split("/", 1)[1]
        assert exports.get(f"folder/{name}").data == f"bytes of {source}".encode()
