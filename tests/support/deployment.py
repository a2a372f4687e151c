"""A real deployment over the moto S3 server: a versioned bucket, with the digits model if asked.

Tests bring their own broker and processes; this holds what they share: the environment a
``labeler`` process needs, the images put in ``incoming/``, and what came out in ``labels/``
(the bucket is versioned, so "written exactly once" is a count of versions).
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from labeler.sample_data import Sample
from labeler.settings import Settings, settings_from_env
from labeler.wiring import Stores
from storage import Area, LabelRecord, ObjectNotFound, ObjectStore, make_s3_client
from storage.keys import label_key, source_key
from storage.s3 import BotoS3Client
from testbed.digits import register_digits
from testbed.processes import TEST_CREDENTIALS, labeler_env
from testbed.services import remove_bucket

ROOT = "labeler"  # every area lives under s3://<bucket>/labeler/<area>
MODEL = "digits"


@dataclass
class S3Deployment:
    """One bucket on the S3 server at ``endpoint_url``, with the digits model in production."""

    endpoint_url: str
    bucket: str

    def env(self, broker_url: str, **settings: object) -> dict[str, str]:
        """The environment of a process on ``broker_url``; ``settings`` override LABELER_*."""
        defaults: dict[str, object] = {
            "broker_url": broker_url,
            "storage_uri": f"s3://{self.bucket}/{ROOT}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_access_key_id": TEST_CREDENTIALS["access_key_id"],
            "s3_secret_access_key": TEST_CREDENTIALS["secret_access_key"],
            "model_name": MODEL,
        }
        return labeler_env(**{**defaults, **settings})

    @cached_property
    def storage_settings(self) -> Settings:
        return settings_from_env(self.env("redis://127.0.0.1:1/0"))  # storage only: no broker used

    @cached_property
    def s3(self) -> BotoS3Client:
        return make_s3_client(self.storage_settings.s3_options()).boto3

    def area(self, area: Area) -> ObjectStore:
        return Stores(self.storage_settings).area(area)

    @cached_property
    def incoming(self) -> ObjectStore:
        return self.area(Area.INCOMING)

    @cached_property
    def labels(self) -> ObjectStore:
        return self.area(Area.LABELS)

    def full_key(self, key: str, area: str = "incoming") -> str:
        """The object key in the bucket of ``key`` in ``area``."""
        return f"{ROOT}/{area}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Drop a PNG at ``key`` in ``incoming/``; its ETag."""
        return self.incoming.put(key, data, content_type="image/png").etag

    def put_images(self, prefix: str, samples: list[Sample], count: int) -> dict[str, str]:
        """Put ``count`` digit PNGs (cycling through ``samples``) under ``prefix``: key -> ETag."""
        keys = [f"{prefix}{i:04d}.png" for i in range(count)]
        with ThreadPoolExecutor(8) as pool:
            etags = pool.map(
                lambda n: self.put(keys[n], samples[n % len(samples)].data), range(count)
            )
            return dict(zip(keys, etags, strict=True))

    def labeled(self, prefix: str) -> set[str]:
        """Source keys under ``prefix`` that have a label record."""
        return {source_key(info.key) for info in self.labels.list(prefix)}

    def record(self, key: str) -> LabelRecord:
        """The record of ``key`` (``ObjectNotFound`` if it has none)."""
        return LabelRecord.model_validate_json(self.labels.get(label_key(key)).data)

    def records(self, keys: list[str]) -> dict[str, LabelRecord]:
        """The record of each key that has one."""

        def read(key: str) -> LabelRecord | None:
            try:
                return self.record(key)
            except ObjectNotFound:
                return None

        with ThreadPoolExecutor(8) as pool:
            found = dict(zip(keys, pool.map(read, keys), strict=True))
        return {key: record for key, record in found.items() if record is not None}

    def label_writes(self, prefix: str) -> Counter[str]:
        """How many times the label of each source key under ``prefix`` was written."""
        writes: Counter[str] = Counter()
        start = self.full_key("", "labels")
        paginator = self.s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start + prefix):
            for version in page.get("Versions", []):
                writes[source_key(version["Key"][len(start) :])] += 1
        return writes


@contextmanager
def s3_deployment(
    endpoint_url: str, model_path: Path | None, *, name: str = "labeler"
) -> Iterator[S3Deployment]:
    """A fresh versioned bucket, with ``model_path`` (if given) imported and promoted as v1;
    removed afterwards."""
    deployment = S3Deployment(endpoint_url, f"{name}-{uuid.uuid4().hex[:8]}")
    deployment.s3.create_bucket(Bucket=deployment.bucket)
    deployment.s3.put_bucket_versioning(
        Bucket=deployment.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    try:
        if model_path is not None:
            register_digits(Stores(deployment.storage_settings).registry(), model_path)
        yield deployment
    finally:
        remove_bucket(deployment.s3, deployment.bucket)


# --- observing processes ------------------------------------------------------------------------


def scrape(port: int, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def holds_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Check ``condition`` stays truthy for ``seconds``; fail as soon as it is not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), f"no longer true: {what}"
        time.sleep(0.1)  # polling a condition that must hold, up to a deadline


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux), forked by any of its threads."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread ended while we looked
    return children
