"""``labeler demo``: the main job end to end on the embedded default, through the real queue.

Exports scikit-learn's digits into ``training/``, starts the embedded stack (a private Redis if
none answers, an inference and a training worker, the dispatcher), retrains from nothing, then
drops a held-out fifth of the digits into ``incoming/`` and waits for the dispatcher and the
inference worker to label them, and prints accuracy against the truth. The data directory
remembers what the demo needs (``labeler.json``: the model name, its own Redis), so the printed
``labeler up --data-dir ...`` carries on with the demo's model and review queue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from labeler.sample_data import Sample, digit_samples
from labeler.settings import Settings, env_name, settings_from_env
from labeler.settings_sources import remember
from labeler.stack import Stack, default_components
from labeler.wiring import Stores
from storage import Area, LabelRecord, ObjectStore
from storage.keys import label_key, report_key

MARKER = ".labeler-demo"  # the demo only ever wipes a directory it created itself
LABEL_TIMEOUT = 600.0
# What the data directory remembers for every later command on it; a private Redis because the
# review queue the demo fills lives there, whatever else answers at the default broker URL.
REMEMBERED: dict[str, object] = {"model_name": "digits", "train_image_size": 32}
REMEMBERED["private_redis"] = True


def run_demo(
    settings: Settings, data_dir: Path, limit: int | None, review_sample: int | None = None
) -> None:
    root = _fresh_demo_dir(data_dir)
    remember(root, **REMEMBERED)
    samples = digit_samples()[:limit]
    held_out = samples[::5]
    training = [s for s in samples if s not in held_out]
    env = {**os.environ, **{env_name(k): str(v).lower() for k, v in REMEMBERED.items()}}
    env.update(  # for the demo's own run: quick reloads and scans, and no other store
        LABELER_DATA_DIR=str(root),
        LABELER_MODEL_RELOAD_SECONDS="1",
        LABELER_SCAN_INTERVAL_SECONDS="1",
        LABELER_STORAGE_URI=root.as_uri(),
    )
    own = settings_from_env(env).model_copy(update={"metrics_port": 0})
    components = [c for c in default_components(own) if c.name not in ("beat", "review")]
    with Stack(own, components, env=env) as stack:
        env = stack.child_env()  # the commands below talk to the stack's Redis
        stores = Stores(settings_from_env(env))
        train_store = stores.area(Area.TRAINING)
        for sample in training:
            train_store.put(sample.key, sample.data)
        click.echo(f"data directory: {root}")
        click.echo(f"{len(training)} training images in {train_store.uri}")
        _labeler(env, "retrain", "--wait")
        incoming = stores.area(Area.INCOMING)
        for sample in held_out:
            incoming.put(f"demo/{sample.key}", sample.data)
        click.echo(f"dropped {len(held_out)} held-out images into {incoming.uri}/demo/")
        records = _wait_for_labels(stack, stores.area(Area.LABELS), held_out)
        _summarise(stores, records, held_out)
        if review_sample:
            _review_and_retrain(env, held_out, review_sample)


def _fresh_demo_dir(data_dir: Path) -> Path:
    root = data_dir.resolve()
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise click.ClickException(
                f"{root} is not empty and was not made by `labeler demo`: choose another "
                "--data-dir (the demo starts from nothing and removes what it made before)"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by `labeler demo`; removed by the next one\n")
    return root


def _wait_for_labels(
    stack: Stack, labels: ObjectStore, held_out: list[Sample]
) -> list[LabelRecord]:
    keys = [label_key(f"demo/{s.key}") for s in held_out]
    deadline = time.monotonic() + LABEL_TIMEOUT
    done = 0
    with click.progressbar(length=len(keys), label="labeling", show_pos=True) as bar:
        while done < len(keys):
            stack.check()
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"only {done} of {len(keys)} labels after {LABEL_TIMEOUT}s"
                )
            now = sum(1 for _ in labels.list("demo/"))
            bar.update(now - done)
            done = now
            time.sleep(0.5)
    return [LabelRecord.model_validate_json(labels.get(key).data) for key in keys]


def _summarise(stores: Stores, records: list[LabelRecord], held_out: list[Sample]) -> None:
    pairs = list(zip(records, held_out, strict=True))
    right = sum(r.label == s.label for r, s in pairs)
    review = sum(r.needs_review for r in records)
    click.echo(
        f"\nlabeled {len(records)} held-out images through the queue: accuracy "
        f"{right / len(records):.4f} against the truth, {review} flagged for review"
    )
    click.echo("per class (truth: correct/total):")
    for digit in sorted({s.label for s in held_out}):
        mine = [(r, s) for r, s in pairs if s.label == digit]
        click.echo(f"  {digit}: {sum(r.label == s.label for r, s in mine)}/{len(mine)}")
    version = records[0].model_version
    click.echo(f"labels: {stores.area(Area.LABELS).uri}/demo/")
    report = report_key("digits", version, "report.html")
    click.echo(f"report: {stores.area(Area.REPORTS).uri}/{report}")
    settings = stores.settings
    root = settings.data_dir
    click.echo(
        f"\n{review} digits wait for review at http://{settings.review_host}:"
        f"{settings.review_port}/ once the stack runs: `labeler up --data-dir {root}` "
        f"({root}/labeler.json remembers the model name and its own Redis, {root}/redis)"
    )


def _review_and_retrain(env: dict[str, str], held_out: list[Sample], count: int) -> None:
    """Answer up to ``count`` queued reviews from the known truth, retrain, compare versions."""
    from labeler.commands_review import review_desk
    from workers.review import Action

    settings = settings_from_env(env)  # the stack's own Redis, where the worker indexed items
    desk = review_desk(settings)
    truth = {f"demo/{s.key}": s.label for s in held_out}
    answered = corrected = 0
    while answered < count and (item := desk.next_item()) is not None:
        key, predicted = item.record.source_key, item.record.label
        action = Action.ACCEPT if truth[key] == predicted else Action.CORRECT
        desk.decide(key, item.claim.token, action, "demo", label=truth[key])
        answered += 1
        corrected += action is Action.CORRECT
    click.echo(
        f"\nreviewed {answered} flagged digits from the known truth ({corrected} corrected); "
        "they joined training/: retraining"
    )
    _labeler(env, "retrain", "--wait")
    registry = Stores(settings).registry()
    version = max(registry.versions())
    reports = Stores(settings).area(Area.REPORTS)
    document = json.loads(reports.get(report_key(registry.name, version, "evaluation.json")).data)
    old = document["production"] or {}
    verdict = "promoted" if document["gate"]["passed"] else "refused by the gate"
    click.echo(
        f"v{version} ({verdict}): accuracy {document['evaluation']['accuracy']:.4f} against "
        f"v{document['parent_version']}'s {old.get('accuracy', float('nan')):.4f} on the same "
        f"test images; {document['reviewed_images_added']} reviewed images joined"
    )


def _labeler(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "labeler", *args], env=env, check=True)
