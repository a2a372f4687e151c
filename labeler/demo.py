"""``labeler demo``: the main job end to end on the embedded default, through the real queue.

Exports scikit-learn's digits into ``training/`` (and a held-out fifth into ``incoming/``),
starts a private redis-server and one training and one inference worker, retrains from nothing,
labels the held-out images through Redis and prints accuracy against the truth.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from labeler.sample_data import digit_samples
from labeler.settings import Settings, load_settings
from labeler.wiring import Stores
from storage import Area, LabelRecord
from storage.keys import label_key, report_key


def run_demo(data_dir: Path, limit: int | None) -> None:
    samples = digit_samples()[:limit]
    held_out = samples[::5]
    training = [s for s in samples if s not in held_out]
    with _redis_server(data_dir / "redis") as broker_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABELER_")}
        env.update(
            LABELER_BROKER_URL=broker_url,
            LABELER_DATA_DIR=str(data_dir),
            LABELER_MODEL_NAME="digits",
            LABELER_TRAIN_IMAGE_SIZE="32",
            LABELER_MODEL_RELOAD_SECONDS="1",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        settings = load_settings(
            **{k[8:].lower(): v for k, v in env.items() if k.startswith("LABELER_")}
        )
        stores = Stores(settings)
        _export(stores, training, held_out)
        click.echo(f"data directory: {data_dir.resolve()}")
        click.echo(f"{len(training)} training images, {len(held_out)} held-out images to label")
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (
            _worker(env, logs / "training.log", "training"),
            _worker(env, logs / "inference.log", "inference"),
        ):
            _labeler(env, "retrain", "--wait")
            _labeler(env, "submit", "demo/", "--wait")
        _summarise(settings, stores, held_out)


def _export(stores: Stores, training: list, held_out: list) -> None:  # type: ignore[type-arg]
    train_store, incoming = stores.area(Area.TRAINING), stores.area(Area.INCOMING)
    for sample in training:
        train_store.put(sample.key, sample.data)
    for sample in held_out:
        incoming.put(f"demo/{sample.key}", sample.data)


def _summarise(settings: Settings, stores: Stores, held_out: list) -> None:  # type: ignore[type-arg]
    labels = stores.area(Area.LABELS)
    records = [
        LabelRecord.model_validate_json(labels.get(label_key(f"demo/{s.key}")).data)
        for s in held_out
    ]
    right = sum(r.label == s.label for r, s in zip(records, held_out, strict=True))
    review = sum(r.needs_review for r in records)
    click.echo(
        f"\nlabeled {len(records)} held-out images through the queue: accuracy "
        f"{right / len(records):.4f} against the truth, {review} flagged for review"
    )
    click.echo("per class (truth -> correct/total):")
    for digit in sorted({s.label for s in held_out}):
        pairs = [(r, s) for r, s in zip(records, held_out, strict=True) if s.label == digit]
        ok = sum(r.label == s.label for r, s in pairs)
        click.echo(f"  {digit}: {ok}/{len(pairs)}")
    version = records[0].model_version
    click.echo(f"labels: {labels.uri}/demo/")
    report = stores.area(Area.REPORTS).uri + "/" + report_key("digits", version, "report.html")
    click.echo(f"report: {report}")


def _labeler(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "labeler", *args], env=env, check=True)


@contextmanager
def _worker(env: dict[str, str], log: Path, queue: str) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "labeler", "worker", "--queues", queue],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


@contextmanager
def _redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException("redis-server not found: apt-get install -y redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise click.ClickException("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
