"""A real `labeler review` process and a raw HTTP client that controls every header."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.processes import LABELER, labeler_env
from testbed.services import free_port
from testbed.waiting import wait_until

SECRET_KEY = "k" * 16 + "-a-real-enough-review-key-for-tests"
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ReviewProcess:
    """`labeler review` on a free port, over a local store and the test's Redis."""

    def __init__(self, data_dir: Path, redis_url: str, log: Path, **settings: object) -> None:
        self.port = free_port()
        self.log = log
        self.env = labeler_env(
            data_dir=data_dir, broker_url=redis_url, review_port=self.port, **settings
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ReviewProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*LABELER, "review"], env=self.env, stdout=out, stderr=out
            )
        wait_until(self._healthy, 60, f"review app (log: {self.log})")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def client(self) -> Client:
        return Client("127.0.0.1", self.port)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"review app exited:\n{self.log.read_text()[-3000:]}")
        try:
            return Client("127.0.0.1", self.port).request("GET", "/healthz").status == 200
        except OSError:
            return False


@dataclass
class Client:
    """One browser's worth of state: the session cookie and its CSRF token."""

    host: str
    port: int
    cookie: str | None = None
    csrf: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        sent = {"Host": f"127.0.0.1:{self.port}", **self.extra}
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        if self.cookie and "Cookie" not in sent:
            sent["Cookie"] = self.cookie
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()
        set_cookie = answer.headers.get("set-cookie", "")
        if set_cookie.startswith("labeler_review="):
            value = set_cookie.split(";")[0]
            self.cookie = None if value == "labeler_review=" else value
        return answer

    def get_csrf(self) -> str:
        self.csrf = self.request("GET", "/api/csrf").json()["csrf"]
        return self.csrf

    def sign_in(self, name: str, password: str) -> Answer:
        token = self.csrf or self.get_csrf()
        form = urllib.parse.urlencode({"username": name, "password": password, "csrf_token": token})
        answer = self.request(
            "POST", "/login", form.encode(), Content_Type="application/x-www-form-urlencoded"
        )
        if answer.status == 303 and answer.headers.get("location") == "/":
            self.get_csrf()  # a new session, a new token
        return answer

    def api(self, path: str, body: dict[str, Any] | None = None, **headers: str) -> Answer:
        data = json.dumps(body if body is not None else {}).encode()
        return self.request(
            "POST", path, data, Content_Type="application/json", X_CSRF_Token=self.csrf, **headers
        )
