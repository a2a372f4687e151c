"""The flywheel measured: which review order teaches the next model most per human answer.

Per seed: the 1,797 digits split into a held-out test set (every sixth digit, 300), 100 labeled
images (10 per class) and a pool of 1,200 unlabeled ones. v1, the small digits CNN, is trained on
the 100 and labels the pool; its review threshold is 1.0, so every pool image waits for review
and the order alone decides which ones a reviewer sees. Then, for each order (uncertainty,
oldest, random) and budget (50, 100, 200): a fresh review queue in a private redis-server, the
real review app (in this process, over its JSON API: ``/api/next`` then ``/api/decide``)
answered with the truth for ``budget`` items, which the app copies to ``training/``; the next
version is the same CNN trained from scratch on the 100 plus those answers, with the same seed;
its accuracy on the held-out 300 is recorded. Training from scratch each time keeps the arms
comparable (no arm inherits another's weights); a production retrain fine-tunes instead.

Writes ``bench/results/flywheel.json``. Figures are recorded, never asserted.

    .venv/bin/python -m bench.flywheel [--seeds 1 2 3] [--budgets 50 100 200] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.deployment import Services
from bench.header import phase, run_header, trusted, write_result
from labeler.sample_data import Sample
from storage import LocalStore, label_key
from storage.registry import ModelMetadata
from testbed.digits import CLASSES, INPUT_SIZE, split_digits
from workers.inference import decode_image, make_record
from workers.review import REVIEW_ORDERS, ReviewDesk, ReviewOrder, ReviewQueue

FIRST_PER_CLASS = 10
POOL = 1200


def _pixels(samples: list[Sample]) -> np.ndarray:
    return np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in samples])


def _fit(samples: list[Sample], seed: int, epochs: int) -> Any:
    """The small digits CNN trained from scratch on ``samples`` with ``seed``."""
    import keras

    from workers.training import make_small_cnn

    keras.utils.set_random_seed(seed)
    model = make_small_cnn(INPUT_SIZE, len(CLASSES), seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    y = np.array([int(s.label) for s in samples])
    model.fit(_pixels(samples), y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    predicted = np.argmax(model.predict(x, batch_size=128, verbose=0), axis=1)
    return round(float(np.mean(predicted == y)), 4)


def _split(seed: int) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(first 100 labeled, pool of 1,200, held-out 300) for ``seed``."""
    rest, held_out = split_digits()
    rng = random.Random(seed)
    rng.shuffle(rest)
    first = [s for d in CLASSES for s in [x for x in rest if x.label == d][:FIRST_PER_CLASS]]
    used = {s.key for s in first}
    pool = [s for s in rest if s.key not in used][:POOL]
    return first, pool, held_out


def _label_pool(v1: Any, pool: list[Sample], root: Path) -> list[Any]:
    """v1's records for the pool (threshold 1.0: all wait for review); the images go to
    incoming/, the records to each arm's own labels/ (a decision marks its record reviewed)."""
    incoming = LocalStore(root / "incoming")
    metadata = ModelMetadata(
        name="digits", version=1, class_names=CLASSES, input_size=INPUT_SIZE, review_threshold=1.0
    )
    probabilities = v1.predict(_pixels(pool), batch_size=128, verbose=0)
    records = []
    for n, (sample, probs) in enumerate(zip(pool, probabilities, strict=True)):
        key = f"pool/{sample.key}"
        etag = incoming.put(key, sample.data).etag
        record = make_record(key, etag, metadata, probs)
        record.created_at = 1_000_000.0 + n  # the pool's (shuffled) order is its upload order
        records.append(record)
    return records


def _fresh_labels(root: Path, arm: str, records: list[Any]) -> LocalStore:
    """v1's records, unreviewed, in a labels store of the arm's own."""
    labels = LocalStore(root / f"labels-{arm}")
    for record in records:
        labels.put(label_key(record.source_key), record.model_dump_json(exclude_none=True).encode())
    return labels


def _review(
    root: Path, labels: LocalStore, queue: ReviewQueue, budget: int, truth: dict[str, str]
) -> tuple[LocalStore, list[dict[str, Any]]]:
    """Answer ``budget`` items through the app's JSON API; returns the training store the app
    copied the answers to, and the items it served."""
    from starlette.testclient import TestClient

    from review import ReviewConfig, Reviewers, create_app

    training = LocalStore(root / f"training-{queue.order}-{budget}")
    desk = ReviewDesk(LocalStore(root / "incoming"), labels, training, queue)
    config = ReviewConfig(
        Reviewers({}), "bench", classes=lambda: list(CLASSES), max_pixels=50_000_000
    )
    app = create_app(desk, config)
    served: list[dict[str, Any]] = []
    with TestClient(app, base_url="http://127.0.0.1") as http:
        headers = {"X-CSRF-Token": http.get("/api/csrf").json()["csrf"]}
        for _ in range(budget):
            item = http.get("/api/next").json()["item"]
            if item is None:
                break
            right = truth[item["key"]]
            body = {"key": item["key"], "token": item["token"], "action": "accept"}
            if item["label"] != right:
                body |= {"action": "correct", "label": right}
            answer = http.post("/api/decide", json=body, headers=headers)
            answer.raise_for_status()
            served.append(item)
    queue.clear()
    return training, served


def _answered(training: LocalStore) -> list[Sample]:
    return [
        Sample(info.key, info.key.split("/", 1)[0], training.get(info.key).data)
        for info in training.list()
    ]


def _one_seed(seed: int, args: Any, root: Path, client: redis.Redis) -> dict[str, Any]:
    first, pool, held_out = _split(seed)
    x_test, y_test = _pixels(held_out), np.array([int(s.label) for s in held_out])
    v1 = _fit(first, seed, args.epochs)
    records = _label_pool(v1, pool, root)
    truth = {r.source_key: r.source_key.split("/")[1] for r in records}
    result: dict[str, Any] = {
        "v1_accuracy": _accuracy(v1, x_test, y_test),
        "v1_pool_accuracy": round(sum(r.label == truth[r.source_key] for r in records) / POOL, 4),
        "arms": {},
    }
    order: ReviewOrder
    for order in REVIEW_ORDERS:
        for budget in args.budgets:
            arm: dict[str, Any] = {}
            with phase(arm):
                namespace = f"flywheel:{seed}:{order}:{budget}"
                queue = ReviewQueue(client, namespace=namespace, order=order)
                queue.add_many(records)
                labels = _fresh_labels(root, f"{order}-{budget}", records)
                training, served = _review(root, labels, queue, budget, truth)
                answered = _answered(training)
                model = _fit(first + answered, seed, args.epochs)
                arm["accuracy"] = _accuracy(model, x_test, y_test)
            arm["reviewed"] = len(answered)
            arm["v1_wrong_among_reviewed"] = sum(i["label"] != truth[i["key"]] for i in served)
            arm["classes_reviewed"] = len({truth[i["key"]] for i in served})
            result["arms"][f"{order}/{budget}"] = arm
            print(seed, order, budget, arm["accuracy"], flush=True)
    return result


def _summary(seeds: dict[str, Any], budgets: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for order in REVIEW_ORDERS:
        for budget in budgets:
            figures = [s["arms"][f"{order}/{budget}"]["accuracy"] for s in seeds.values()]
            table[f"{order}/{budget}"] = {
                "mean": round(statistics.mean(figures), 4),
                "min": min(figures),
                "max": max(figures),
            }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    result: dict[str, Any] = {"header": run_header(), "epochs": args.epochs, "seeds": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-flywheel-") as tmp, ExitStack() as stack:
        services = Services(Path(tmp), stack)
        client = redis.Redis.from_url(services.redis_url(0))
        for seed in args.seeds:
            root = Path(tmp) / f"seed-{seed}"
            result["seeds"][str(seed)] = _one_seed(seed, args, root, client)
        client.close()
    result["summary"] = _summary(result["seeds"], args.budgets)
    arms = [a for s in result["seeds"].values() for a in s["arms"].values()]
    result["trusted"] = trusted(*arms)
    result["seconds"] = round(time.perf_counter() - started)
    path = write_result("flywheel", result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
