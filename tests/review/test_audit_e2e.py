"""Audits end to end with a known truth: digits labeled by a real inference worker, every review
item answered with the true class through a real review app's JSON API; the stated precision of
the automatic labels must cover the truth. Then the counts survive a restart and a reindex."""

from __future__ import annotations

import http.cookiejar
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from labeler.settings import settings_from_env
from labeler.wiring import Stores
from storage import Area, LabelRecord, label_key
from testbed.digits import register_digits, split_digits, train_digits_model
from testbed.processes import LABELER, labeler_env, run_labeler, running_worker
from testbed.services import free_port
from testbed.waiting import wait_until

pytestmark = pytest.mark.slow


class Api:
    """A reviewer's session with the JSON API of a running review app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.csrf = self.get("/api/csrf")["csrf"]

    def get(self, path: str) -> Any:
        with self.opener.open(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the test's own http:// URL
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-CSRF-Token": self.csrf},
        )
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def review_app(env: dict[str, str], log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{env['LABELER_REVIEW_PORT']}"
    with log.open("ab") as out:
        process = subprocess.Popen([*LABELER, "review"], env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: _answers(url + "/healthz"), 60, f"review app (log: {log})")
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - loopback only
            return True
    except OSError:
        return False


def test_audited_precision_covers_the_true_precision_of_automatic_labels(
    tmp_path: Path, redis_url: str
) -> None:
    data_dir = tmp_path / "data"
    env = labeler_env(
        data_dir=data_dir,
        broker_url=redis_url,
        review_port=free_port(),
        audit_rate=0.4,  # high, so 300 images give enough audits
        audit_min_per_class=3,
    )
    stores = Stores(settings_from_env(env))
    train, held_out = split_digits()
    # A deliberately mediocre model, so the precision to estimate is well under 1.
    model = train_digits_model(tmp_path / "weak.keras", train[::8], epochs=4)
    register_digits(stores.registry(), model)
    incoming = stores.area(Area.INCOMING)
    for sample in held_out:
        incoming.put(f"new/{sample.key}", sample.data)  # sample.key is <digit>/<file>
    logs = tmp_path / "logs"
    logs.mkdir()

    with running_worker(env, logs / "inference.log", "--queues", "inference"):
        run_labeler(env, "submit", "new/", "--wait", "--timeout", "300", timeout=400)
    labels = stores.area(Area.LABELS)
    records = [
        LabelRecord.model_validate_json(labels.get(label_key(f"new/{s.key}")).data)
        for s in held_out
    ]
    auto = [r for r in records if r.ok and not r.needs_review]
    truth = sum(r.label == _truth(r.source_key) for r in auto) / len(auto)
    assert 0.3 < truth < 0.99, f"the weak model's automatic labels are right {truth:.3f}"
    audited = [r for r in auto if r.audit]
    assert len(audited) >= 0.3 * len(auto)

    with review_app(env, logs / "review.log") as url:
        api = Api(url)
        seen_audits = 0
        while (item := api.get("/api/next")["item"]) is not None:
            if item.get("audit"):
                seen_audits += 1
                assert {"label", "score", "top_k"}.isdisjoint(item)  # blind
            body = {"key": item["key"], "token": item["token"], "action": "correct"}
            api.post("/api/decide", body | {"label": _truth(item["key"])})
        assert seen_audits == len(audited)
        quality = api.get("/api/stats")["label_quality"]

    stated = quality["auto"]
    assert (stated["labels"], stated["audited"]) == (len(auto), len(audited))
    assert stated["low"] <= truth <= stated["high"], (truth, stated)
    assert abs(stated["precision"] - truth) <= 0.06, (truth, stated)
    flagged = [r for r in records if r.ok and r.needs_review]
    reviewed_truth = sum(r.label == _truth(r.source_key) for r in flagged) / len(flagged)
    assert quality["reviewed"]["reviewed"] == len(flagged)
    assert quality["reviewed"]["agreement"] == pytest.approx(reviewed_truth)

    # The counters live in Redis: a reindex and a new app process state the same figures.
    out = run_labeler(env, "review", "reindex").stdout
    assert out.startswith("0 records wait")
    with review_app(env, logs / "review2.log") as url:
        assert Api(url).get("/api/stats")["label_quality"] == quality
        status = subprocess.run(
            [*LABELER, "status", "--json", "--component", f"review={url}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        text = subprocess.run(
            [*LABELER, "status", "--component", f"review={url}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    reported = json.loads(status.stdout)["label_quality"]
    assert reported["auto"] == stated
    assert reported["model_version"] == 1
    line = (
        f"automatic labels (v1): precision {stated['precision']:.3f} "
        f"[{stated['low']:.3f}, {stated['high']:.3f}], {len(audited)} audited of {len(auto)}"
    )
    assert line in text


def _truth(key: str) -> str:
    return key.split("/")[1]  # new/<digit>/<file>
