"""The review app's handlers, in process, over a real redis-server and a local store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from review import Reviewers, hash_password
from tests.review.support import ReviewSetup

PASSWORD = "correct horse battery staple"
LOCAL = "http://127.0.0.1"  # the loopback-only app answers to loopback Host names only


@pytest.fixture
def setup(tmp_path: Path, redis_url: str) -> ReviewSetup:
    return ReviewSetup.build(tmp_path, redis_url)


@pytest.fixture
def local(setup: ReviewSetup) -> Iterator[TestClient]:
    """No credentials configured: one local reviewer (the app then binds 127.0.0.1 only)."""
    with TestClient(setup.app(), base_url=LOCAL, follow_redirects=False) as client:
        yield client


@pytest.fixture(scope="module")
def reviewers() -> Reviewers:
    return Reviewers.parse([f"ana:{hash_password(PASSWORD)}"], "test")


@pytest.fixture
def guarded(setup: ReviewSetup, reviewers: Reviewers) -> Iterator[TestClient]:
    with TestClient(setup.app(reviewers), base_url=LOCAL, follow_redirects=False) as client:
        yield client


def csrf(client: TestClient) -> str:
    token = client.get("/api/csrf").json()["csrf"]
    assert isinstance(token, str)
    return token


def sign_in(client: TestClient, password: str = PASSWORD) -> str:
    token = csrf(client)
    response = client.post(
        "/login", data={"username": "ana", "password": password, "csrf_token": token}
    )
    assert response.status_code == 303
    return response.headers["location"]


def test_next_correct_and_the_effects(setup: ReviewSetup, local: TestClient) -> None:
    setup.seed("shelter/a.png", label="cat", at=1)
    setup.seed("shelter/b.png", label="dog", at=2)
    headers = {"X-CSRF-Token": csrf(local)}

    item = local.get("/api/next").json()["item"]
    assert item["key"] == "shelter/a.png"
    assert [p["label"] for p in item["top_k"]] == ["cat", "dog"]
    assert item["model_version"] == 3
    image = local.get("/image", params={"key": item["key"]})
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")

    decided = local.post(
        "/api/decide",
        json={"key": item["key"], "token": item["token"], "action": "correct", "label": "fox"},
        headers=headers,
    )

    assert decided.status_code == 200, decided.text
    review = setup.record("shelter/a.png").review
    assert review is not None
    assert (review.label, review.outcome, review.reviewer) == ("fox", "corrected", "local")
    assert setup.training.exists("fox/shelter/a.png")
    stats = local.get("/api/stats").json()
    assert stats["pending"] == 1
    assert stats["by_class"] == {"dog": 1}
    assert stats["agreement"] == {"cat": 0.0}
    metrics = local.get("/metrics").text
    assert 'labeler_reviews_total{outcome="corrected"} 1.0' in metrics
    assert "labeler_review_pending 1.0" in metrics
    assert local.get("/api/next").json()["item"]["key"] == "shelter/b.png"


def test_the_page_has_the_classes_and_security_headers(local: TestClient) -> None:
    page = local.get("/")

    assert page.status_code == 200
    assert 'data-class="fox"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert local.get("/static/review.js").headers["content-type"].startswith("text/javascript")


def test_no_session_is_refused(guarded: TestClient) -> None:
    assert guarded.get("/api/next").status_code == 401
    assert guarded.get("/image", params={"key": "a.png"}).status_code == 401
    page = guarded.get("/")
    assert page.status_code == 303
    assert page.headers["location"] == "/login"
    token = csrf(guarded)
    refused = guarded.post(
        "/api/decide", json={"key": "a.png", "action": "accept"}, headers={"X-CSRF-Token": token}
    )
    assert refused.status_code == 401


def test_sign_in_with_the_right_password_only(setup: ReviewSetup, guarded: TestClient) -> None:
    assert sign_in(guarded, "wrong") == "/login?failed=1"
    assert guarded.get("/api/next").status_code == 401

    assert sign_in(guarded) == "/"
    setup.seed("x.png")
    item = guarded.get("/api/next").json()["item"]
    decided = guarded.post(
        "/api/decide",
        json={"key": "x.png", "token": item["token"], "action": "accept"},
        headers={"X-CSRF-Token": csrf(guarded)},
    )
    assert decided.status_code == 200
    assert decided.json()["record"]["review"]["reviewer"] == "ana"


def test_missing_or_wrong_csrf_token_is_403(setup: ReviewSetup, local: TestClient) -> None:
    setup.seed("y.png")
    item = local.get("/api/next").json()["item"]
    body = {"key": "y.png", "token": item["token"], "action": "accept"}
    csrf(local)

    assert local.post("/api/decide", json=body).status_code == 403
    assert local.post("/api/decide", json=body, headers={"X-CSRF-Token": "x"}).status_code == 403
    assert local.post("/login", data={"username": "ana", "password": "p"}).status_code == 403
    assert setup.record("y.png").review is None


@pytest.mark.parametrize("key", ["../labels/y.png.json", "/etc/passwd", "a/../../b.png", ""])
def test_keys_with_dots_or_absolute_are_400(local: TestClient, key: str) -> None:
    headers = {"X-CSRF-Token": csrf(local)}
    assert local.get("/image", params={"key": key}).status_code == 400
    body = {"key": key, "token": "t", "action": "accept"}
    assert local.post("/api/decide", json=body, headers=headers).status_code == 400


def test_html_named_jpg_is_never_served_as_html(setup: ReviewSetup, local: TestClient) -> None:
    setup.incoming.put("evil.jpg", b"<html><script>alert(document.cookie)</script></html>")
    setup.incoming.put("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>')

    for key in ("evil.jpg", "evil.svg"):
        response = local.get("/image", params={"key": key})
        assert response.status_code == 415
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert b"<script" not in response.content
        assert b"onload" not in response.content


def test_a_reviewer_cannot_write_outside_training(
    setup: ReviewSetup, local: TestClient, tmp_path: Path
) -> None:
    setup.seed("z.png")
    item = local.get("/api/next").json()["item"]
    headers = {"X-CSRF-Token": csrf(local)}
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    for label in ("../models", "../../etc", "a/b", "/abs", ".hidden", ""):
        body = {"key": "z.png", "token": item["token"], "action": "correct", "label": label}
        assert local.post("/api/decide", json=body, headers=headers).status_code == 400

    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before
    assert setup.record("z.png").review is None


def test_a_lost_lease_is_409(setup: ReviewSetup, local: TestClient) -> None:
    setup.seed("w.png")
    body = {"key": "w.png", "token": "not-mine", "action": "accept"}
    response = local.post("/api/decide", json=body, headers={"X-CSRF-Token": csrf(local)})
    assert response.status_code == 409
    assert response.json()["reason"] == "lease_lost"


def test_two_reviewers_at_once_decide_every_item_exactly_once(
    setup: ReviewSetup, reviewers: Reviewers
) -> None:
    keys = [f"batch/{n:02d}.png" for n in range(50)]
    for n, key in enumerate(keys):
        setup.seed(key, label="cat", at=float(n))
    app = setup.app()
    start = threading.Barrier(2, timeout=60)

    def review_until_empty(name: str) -> list[str]:
        decided = []
        with TestClient(app, base_url=LOCAL) as client:
            headers = {"X-CSRF-Token": csrf(client)}
            start.wait()  # both reviewers begin together
            while (item := client.get("/api/next").json()["item"]) is not None:
                action = "accept" if len(decided) % 2 else "correct"
                body = {"key": item["key"], "token": item["token"], "action": action}
                response = client.post("/api/decide", json=body | {"label": name}, headers=headers)
                assert response.status_code == 200, response.text
                decided.append(item["key"])
        return decided

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(review_until_empty, ["dog", "fox"])

    assert sorted(first + second) == keys  # each once: no item went to both reviewers
    assert first
    assert second
    assert setup.queue.pending() == 0
    tallies = setup.queue.tallies()["cat"]
    assert tallies["agreed"] + tallies["corrected"] == 50
    in_training = [info.key.split("/", 1)[1] for info in setup.training.list()]
    assert sorted(in_training) == keys
    assert all(setup.record(key).review is not None for key in keys)


def test_health_is_503_when_the_index_is_unreachable(tmp_path: Path) -> None:
    from testbed.services import free_port

    unreachable = ReviewSetup.build(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(unreachable.app(), base_url=LOCAL) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"ok": False, "error": "ConnectionError"}


def test_an_audit_item_is_blind_and_its_decision_is_measured(
    setup: ReviewSetup, local: TestClient
) -> None:
    setup.seed("audit/a.png", label="cat", at=1, audit=True)
    setup.seed("audit/b.png", label="dog", at=2, audit=True)
    headers = {"X-CSRF-Token": csrf(local)}
    decided = {}
    for answer in ("cat", "cat"):  # a: agreed (its label was cat), b: corrected (it was dog)
        item = local.get("/api/next").json()["item"]
        assert item["audit"] is True
        assert {"label", "score", "top_k"}.isdisjoint(item)  # nothing to anchor on
        body = {"key": item["key"], "token": item["token"], "action": "correct", "label": answer}
        response = local.post("/api/decide", json=body, headers=headers)
        assert response.status_code == 200, response.text
        decided[item["key"]] = response.json()["record"]["review"]["outcome"]
    assert decided == {"audit/a.png": "agreed", "audit/b.png": "corrected"}

    quality = local.get("/api/stats").json()["label_quality"]
    assert quality["model_version"] == 3
    auto = quality["auto"]
    assert (auto["labels"], auto["audited"]) == (2, 2)
    assert auto["by_class"]["cat"]["precision"] == 1.0
    assert auto["by_class"]["dog"]["precision"] == 0.0
    assert auto["low"] < auto["precision"] < auto["high"]
    assert quality["reviewed"]["reviewed"] == 0  # audits are not low-confidence reviews
    metrics = local.get("/metrics").text
    assert 'labeler_auto_label_precision{bound="point",label="cat",model_version="3"} 1.0' in (
        metrics
    )
    assert 'labeler_audits_total{label="dog",model_version="3",outcome="corrected"} 1.0' in (
        metrics
    )
    assert "labeler_auto_label_precision_target 0.95" in metrics
