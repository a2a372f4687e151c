"""Two reviewers at once against a real `labeler review` process: each item decided once."""

from __future__ import annotations

import http.cookiejar
import json
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from review import hash_password
from testbed.processes import LABELER, labeler_env
from testbed.services import free_port
from testbed.waiting import wait_until
from tests.review.support import ReviewSetup

pytestmark = pytest.mark.slow
ITEMS = 50


class Reviewer:
    """One browser's worth of state: a cookie jar, a session, its CSRF token."""

    def __init__(self, url: str) -> None:
        self.url = url
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.csrf = self.get("/api/csrf")["csrf"]

    def get(self, path: str) -> dict[str, object]:
        with self.opener.open(self.url + path, timeout=30) as response:
            return dict(json.loads(response.read()))

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method="POST")  # noqa: S310 - loopback
        request.add_header("Content-Type", content_type)
        request.add_header("X-CSRF-Token", self.csrf)
        with self.opener.open(request, timeout=30) as response:
            return response.status, response.read()

    def sign_in(self, name: str, password: str) -> None:
        form = {"username": name, "password": password, "csrf_token": self.csrf}
        self.post(
            "/login", urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
        )
        self.csrf = self.get("/api/csrf")["csrf"]  # a new session after signing in

    def review_until_empty(self, label: str, start: threading.Barrier) -> list[str]:
        decided = []
        start.wait()
        while (item := self.get("/api/next")["item"]) is not None:
            assert isinstance(item, dict)
            body = {"key": item["key"], "token": item["token"], "action": "correct", "label": label}
            status, _ = self.post("/api/decide", json.dumps(body).encode(), "application/json")
            assert status == 200
            decided.append(str(item["key"]))
        return decided


@pytest.fixture
def app_url(tmp_path: Path, redis_url: str) -> Iterator[str]:
    port = free_port()
    users = ",".join(f"{name}:{hash_password(name + '-pw')}" for name in ("ana", "bo"))
    env = labeler_env(data_dir=tmp_path, broker_url=redis_url, review_users=users, review_port=port)
    log = tmp_path / "review.log"
    with log.open("ab") as out:
        process = subprocess.Popen([*LABELER, "review"], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: Reviewer(url), 60, f"the review app (log: {log})")
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_two_reviewers_decide_every_item_exactly_once(
    tmp_path: Path, redis_url: str, app_url: str
) -> None:
    setup = ReviewSetup.build(tmp_path, redis_url)  # the same data dir and Redis as the app
    keys = [f"q/{n:02d}.png" for n in range(ITEMS)]
    for n, key in enumerate(keys):
        setup.seed(key, label="cat", at=float(n))
    ana, bo = Reviewer(app_url), Reviewer(app_url)
    ana.sign_in("ana", "ana-pw")
    bo.sign_in("bo", "bo-pw")
    start = threading.Barrier(2, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        by_ana = pool.submit(ana.review_until_empty, "dog", start)
        by_bo = pool.submit(bo.review_until_empty, "fox", start)
        decided = {"ana": by_ana.result(), "bo": by_bo.result()}

    assert sorted(decided["ana"] + decided["bo"]) == keys  # nobody got an item twice
    assert decided["ana"]
    assert decided["bo"]
    for name, label in (("ana", "dog"), ("bo", "fox")):
        for key in decided[name]:
            review = setup.record(key).review
            assert review is not None
            assert (review.reviewer, review.label) == (name, label)
            assert setup.training.exists(f"{label}/{key}")
    assert setup.queue.pending() == 0
