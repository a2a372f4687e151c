"""The review app in the open, probed through real HTTP against a real `labeler review` process:
secrets, sessions that end, bounded bodies, throttled sign-in, Host and cross-site checks,
leases bound to sessions, clean 4xx errors, Secure cookies behind TLS."""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from review import hash_password
from testbed.processes import LABELER, labeler_env
from tests.review.hardening_support import (
    SECRET_KEY,
    SECURITY_HEADERS,
    Answer,
    Client,
    ReviewProcess,
)
from tests.review.support import ReviewSetup

pytestmark = pytest.mark.slow
PASSWORD = "a long enough password for ana"
MB = 1024 * 1024


@pytest.fixture
def setup(tmp_path: Path, redis_url: str) -> ReviewSetup:
    return ReviewSetup.build(tmp_path / "data", redis_url)


def _app(tmp_path: Path, redis_url: str, name: str, **settings: object) -> ReviewProcess:
    return ReviewProcess(tmp_path / "data", redis_url, tmp_path / f"{name}.log", **settings)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"ana:{hash_password(PASSWORD)}\nbob:{hash_password(PASSWORD)}\n")
    return path


@pytest.fixture
def guarded(tmp_path: Path, redis_url: str, users_file: Path) -> Iterator[ReviewProcess]:
    app = _app(
        tmp_path, redis_url, "guarded", review_users_file=users_file, review_secret_key=SECRET_KEY
    )
    try:
        yield app.start()
    finally:
        app.stop()


@pytest.fixture
def local(tmp_path: Path, redis_url: str) -> Iterator[ReviewProcess]:
    app = _app(tmp_path, redis_url, "local", review_secret_key=SECRET_KEY)
    try:
        yield app.start()
    finally:
        app.stop()


def _signed_in(app: ReviewProcess, name: str = "ana") -> Client:
    client = app.client()
    assert client.sign_in(name, PASSWORD).headers["location"] == "/"
    return client


def _clean(answer: Answer, status: int) -> None:
    assert answer.status == status, answer.body
    for name in SECURITY_HEADERS:
        assert name in answer.headers, (name, answer.headers)


# --- 1. secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "says"),
    [("change-me-review-secret-key", "placeholder"), ("short-but-real-3e9f", "32 bytes")],
)
def test_a_placeholder_or_short_key_is_refused_with_reviewers(
    tmp_path: Path, redis_url: str, users_file: Path, key: str, says: str
) -> None:
    env = labeler_env(
        data_dir=tmp_path, broker_url=redis_url, review_users_file=users_file, review_secret_key=key
    )
    result = subprocess.run(
        [*LABELER, "review"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert says in result.stderr
    assert "token_urlsafe" in result.stderr  # how to make a real one
    assert key not in result.stderr


@pytest.mark.parametrize("name", ["redis_password", "s3_secret_access_key"])
def test_components_refuse_the_example_placeholders(tmp_path: Path, name: str) -> None:
    settings = {name: "change-me-something", "data_dir": tmp_path}
    if name == "s3_secret_access_key":
        settings["s3_access_key_id"] = "labeler-admin"
    env = labeler_env(**settings)
    result = subprocess.run(
        [*LABELER, "review"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"LABELER_{name.upper()}" in result.stderr
    assert "secrets.token_urlsafe" in result.stderr


def test_gen_secret_prints_a_usable_key() -> None:
    result = subprocess.run(
        [*LABELER, "review", "gen-secret"], capture_output=True, text=True, timeout=60
    )
    key = result.stdout.strip()
    assert result.returncode == 0
    assert len(key) >= 48


# --- 2. sessions --------------------------------------------------------------------------------


def test_a_cookie_replayed_after_sign_out_is_dead(guarded: ReviewProcess) -> None:
    ana = _signed_in(guarded)
    stolen = Client("127.0.0.1", guarded.port, cookie=ana.cookie, csrf=ana.csrf)
    assert stolen.api("/api/next").status == 200
    assert ana.api("/logout").status == 303

    assert stolen.api("/api/next").status == 401
    assert stolen.request("GET", "/api/stats").status == 401
    assert (
        stolen.api("/api/decide", {"key": "a.png", "token": "t", "action": "accept"}).status == 401
    )


def test_sign_out_ends_every_session_of_that_user(guarded: ReviewProcess) -> None:
    laptop, phone = _signed_in(guarded, "ana"), _signed_in(guarded, "ana")
    bob = _signed_in(guarded, "bob")
    assert phone.api("/api/next").status == 200
    assert laptop.api("/logout").status == 303

    assert phone.api("/api/next").status == 401
    assert bob.api("/api/next").status == 200  # another user's sessions go on
    again = _signed_in(guarded, "ana")  # and ana can sign in anew
    assert again.api("/api/next").status == 200


def test_the_cookie_is_an_opaque_id_and_holds_no_token(guarded: ReviewProcess) -> None:
    ana = _signed_in(guarded)
    assert ana.cookie is not None
    value = ana.cookie.split("=", 1)[1]
    assert ana.csrf not in value
    assert "ana" not in value
    assert len(value) <= 64


def test_removal_and_password_change_end_sessions(
    tmp_path: Path, redis_url: str, users_file: Path, guarded: ReviewProcess
) -> None:
    ana, bob = _signed_in(guarded, "ana"), _signed_in(guarded, "bob")
    guarded.stop()
    # ana removed; bob's password changed.
    users_file.write_text(f"bob:{hash_password('another password for bob')}\n")
    restarted = _app(
        tmp_path, redis_url, "again", review_users_file=users_file, review_secret_key=SECRET_KEY
    ).start()
    try:
        for who in (ana, bob):
            who.port = restarted.port
            assert who.request("GET", "/api/stats").status == 401
            assert who.api("/api/next").status in (401, 403)
        assert _signed_in_as(restarted, "bob", "another password for bob")
    finally:
        restarted.stop()


def _signed_in_as(app: ReviewProcess, name: str, password: str) -> bool:
    client = app.client()
    client.sign_in(name, password)
    return client.request("GET", "/api/stats").status == 200


def test_a_loopback_only_session_never_works_on_a_credentialed_app(
    local: ReviewProcess, guarded: ReviewProcess
) -> None:
    visitor = local.client()
    visitor.get_csrf()
    assert visitor.request("GET", "/api/stats").status == 200  # signed in as `local` there
    visitor.port = guarded.port
    assert visitor.request("GET", "/api/stats").status == 401
    assert visitor.api("/api/next").status in (401, 403)


# --- 3. bodies ----------------------------------------------------------------------------------


def test_a_declared_huge_body_is_413_before_it_is_read(guarded: ReviewProcess) -> None:
    client = guarded.client()
    token = client.get_csrf()
    connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    connection.putrequest("POST", "/login", skip_host=True, skip_accept_encoding=True)
    for name, value in (
        ("Host", f"127.0.0.1:{guarded.port}"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Length", str(200 * MB)),
        ("X-CSRF-Token", token),
        ("Cookie", client.cookie or ""),
    ):
        connection.putheader(name, value)
    connection.endheaders(b"password=" + b"x" * 1000)
    response = connection.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    _clean(Answer(response.status, headers, response.read()), 413)
    connection.close()


def test_a_streamed_200_mb_password_costs_no_memory(guarded: ReviewProcess) -> None:
    client = guarded.client()
    token = client.get_csrf()
    before = guarded.rss_bytes()
    connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    connection.putrequest("POST", "/login", skip_host=True, skip_accept_encoding=True)
    for name, value in (
        ("Host", f"127.0.0.1:{guarded.port}"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Transfer-Encoding", "chunked"),
        ("X-CSRF-Token", token),
        ("Cookie", client.cookie or ""),
    ):
        connection.putheader(name, value)
    connection.endheaders()
    chunk = b"x" * MB
    sent = 0
    try:
        connection.send(b"%x\r\npassword=\r\n" % len(b"password="))
        while sent < 200 * MB:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered 413 and closed: what we want
    response = connection.getresponse()
    assert response.status == 413
    connection.close()
    assert guarded.rss_bytes() - before < 20 * MB


def test_the_json_api_bounds_its_bodies(guarded: ReviewProcess) -> None:
    ana = _signed_in(guarded)
    big = {"key": "a.png", "token": "t", "action": "correct", "label": "x" * MB}
    _clean(ana.api("/api/decide", big), 413)
    _clean(ana.api("/api/skip", {"key": "k" * (20 * 1024), "token": "t"}), 413)


# --- 5. sign-in throttling ----------------------------------------------------------------------


def test_wrong_passwords_are_throttled_with_backoff(guarded: ReviewProcess) -> None:
    client = guarded.client()
    statuses = [client.sign_in("ana", f"wrong-{n}").status for n in range(8)]
    assert statuses[:5] == [303] * 5
    assert 429 in statuses[5:]
    refused = client.sign_in("ana", PASSWORD)  # the right one, while locked out
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert client.request("GET", "/api/stats").status == 401
    log = guarded.log.read_text()
    assert "failed sign-in for 'ana'" in log
    assert "wrong-3" not in log
    assert PASSWORD not in log
    # Another reviewer from the same address is not locked out by ana's failures.
    assert _signed_in_as(guarded, "bob", PASSWORD)


def test_the_lock_ends_and_backoff_grows(guarded: ReviewProcess) -> None:
    client = guarded.client()
    for n in range(6):
        client.sign_in("ana", f"wrong-{n}")
    first = client.sign_in("ana", "wrong-again")
    assert first.status == 429
    wait = int(first.headers["retry-after"])
    assert 1 <= wait <= 2
    time.sleep(wait + 0.2)  # the lock is a wall-clock TTL: nothing to poll but the clock
    assert client.sign_in("ana", "wrong-7").status == 303  # heard again, and wrong
    second = client.sign_in("ana", PASSWORD)
    assert second.status == 429
    assert int(second.headers["retry-after"]) >= wait


# --- 6. Host, cross-site, leases ----------------------------------------------------------------


def test_loopback_mode_answers_loopback_names_only(local: ReviewProcess) -> None:
    client = local.client()
    _clean(client.request("GET", "/api/csrf", Host=f"rebind.example:{local.port}"), 400)
    _clean(client.request("GET", "/", Host="attacker.test"), 400)
    for host in (f"127.0.0.1:{local.port}", f"localhost:{local.port}", f"[::1]:{local.port}"):
        assert client.request("GET", "/api/csrf", Host=host).status == 200


def test_a_cross_site_get_leases_nothing(setup: ReviewSetup, local: ReviewProcess) -> None:
    setup.seed("a.png")
    attacker = local.client()
    for headers in (
        {"Sec_Fetch_Site": "cross-site"},
        {"Sec_Fetch_Site": "cross-site", "Origin": f"http://127.0.0.1:{local.port}"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ):
        _clean(attacker.request("GET", "/api/next", **headers), 403)
    assert setup.queue.pending() == 1
    reviewer = local.client()
    reviewer.get_csrf()
    item = reviewer.api("/api/next", Sec_Fetch_Site="same-origin").json()["item"]
    assert item is not None
    assert item["key"] == "a.png"


def test_a_cross_site_post_is_refused_even_with_the_token(local: ReviewProcess) -> None:
    client = local.client()
    client.get_csrf()
    _clean(client.api("/api/next", Origin="http://evil.example"), 403)
    _clean(client.api("/logout", Sec_Fetch_Site="same-site"), 403)


def test_leases_belong_to_the_session_that_claimed_them(
    setup: ReviewSetup, guarded: ReviewProcess
) -> None:
    setup.seed("a.png")
    ana, bob = _signed_in(guarded, "ana"), _signed_in(guarded, "bob")
    item = ana.api("/api/next").json()["item"]
    stolen = {"key": item["key"], "token": item["token"]}

    taken = bob.api("/api/decide", {**stolen, "action": "accept"})
    assert (taken.status, taken.json()["reason"]) == (409, "lease_lost")
    skipped = bob.api("/api/skip", stolen)
    assert (skipped.status, skipped.json()["reason"]) == (409, "lease_lost")
    assert ana.api("/api/decide", {**stolen, "action": "accept"}).status == 200


def test_skip_says_when_the_lease_is_not_held(setup: ReviewSetup, guarded: ReviewProcess) -> None:
    setup.seed("a.png")
    ana = _signed_in(guarded)
    item = ana.api("/api/next").json()["item"]
    assert (
        ana.api(
            "/api/decide", {"key": item["key"], "token": item["token"], "action": "discard"}
        ).status
        == 200
    )
    again = ana.api("/api/skip", {"key": item["key"], "token": item["token"]})
    assert (again.status, again.json()["reason"]) == (409, "lease_lost")


# --- 7. clean errors ----------------------------------------------------------------------------


def test_error_paths_are_clean_4xx(setup: ReviewSetup, guarded: ReviewProcess) -> None:
    setup.seed("a.png", at=1)
    # 1010 bytes: a fine key, but "<class>/<key>" in training/ would pass the 1024-byte limit.
    over = "k/" + "/".join(["y" * 200] * 5) + ".png"
    setup.seed(over, label="a-longer-class-name", at=2)
    ana = _signed_in(guarded)
    # Two classes take turns under the default (uncertainty) order: lease both, then pick.
    items = {i["key"]: i for i in (ana.api("/api/next").json()["item"] for _ in range(2))}
    item, second = items["a.png"], items[over]
    held = {"key": item["key"], "token": item["token"]}
    _clean(ana.api("/api/decide", {**held, "action": "correct", "label": "cat\n"}), 400)
    _clean(ana.api("/api/decide", {**held, "action": "correct", "label": "a/b"}), 400)
    long_key = "d/" + "x" * 300 + ".png"
    _clean(ana.request("GET", f"/image?key={long_key}"), 400)
    # Never leased (no such file can exist here): the lease check answers, cleanly.
    _clean(ana.api("/api/decide", {"key": long_key, "token": "t", "action": "accept"}), 409)
    _clean(ana.api("/api/skip", {"key": long_key, "token": "t"}), 409)
    accept = {"key": over, "token": second["token"], "action": "accept"}
    _clean(ana.api("/api/decide", accept), 400)  # InvalidKey from the decision: a 400


def test_a_predicted_label_that_is_no_class_name_never_becomes_a_path(
    setup: ReviewSetup, guarded: ReviewProcess
) -> None:
    setup.seed("a.png", label="a/b")
    ana = _signed_in(guarded)
    item = ana.api("/api/next").json()["item"]
    accepted = ana.api(
        "/api/decide", {"key": item["key"], "token": item["token"], "action": "accept"}
    )
    _clean(accepted, 400)
    assert not (setup.training.root / "a").exists()
    fixed = {"key": item["key"], "token": item["token"], "action": "correct", "label": "cat"}
    assert ana.api("/api/decide", fixed).status == 200


# --- 8. Secure cookies behind TLS ---------------------------------------------------------------


def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(guarded: ReviewProcess) -> None:
    direct = guarded.client().request("GET", "/api/csrf")
    assert "Secure" not in direct.headers["set-cookie"]
    proxied = guarded.client().request("GET", "/api/csrf", X_Forwarded_Proto="https")
    assert "Secure" in proxied.headers["set-cookie"]
    assert "HttpOnly" in proxied.headers["set-cookie"]


def test_the_session_store_forgets_anonymous_sessions_soon(
    redis_url: str, guarded: ReviewProcess
) -> None:
    guarded.client().get_csrf()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("labeler:review:session:*"))
    assert len(keys) == 1
    assert 0 < client.ttl(keys[0]) <= 15 * 60
