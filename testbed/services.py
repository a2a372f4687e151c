"""Real services on loopback ports: a private redis-server, a moto S3 server (and a way to remove
a bucket from it), a TCP proxy, and a producer that pushes bucket events into Redis as MinIO does.

Each runs in its own process (or thread, for the proxy and the producer) and is stopped by
whoever started it (a test fixture, a benchmark). A missing binary raises :class:`MissingBinary`;
the test suite turns that into a skip locally and a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from testbed.waiting import wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client as BotoS3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


class MissingBinary(RuntimeError):
    """A program a service needs is not installed; the message says how to install it."""


def require_binary(name: str, how_to_install: str) -> str:
    """Path of ``name`` on PATH.

    Raises:
        MissingBinary: it is not there.
    """
    path = shutil.which(name)
    if path is None:
        raise MissingBinary(f"{name} not found on PATH; install it with: {how_to_install}")
    return path


# Ports for the servers tests start lie below Linux's ephemeral range (32768-60999), which the
# kernel hands to outgoing connections and to bind(0): a port from there can be taken by some
# client's connection before our server binds it, or while a Redis restarts on it. A port is
# checked when it is picked but bound only later, by a server that may take seconds to start,
# so the range is split between the test processes (pytest-xdist's gw0, gw1, ...) and each
# process walks its own share in order: no two picks, in one process or two, are the same port.
_SERVER_PORTS = range(20000, 32000)


def _own_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) % count  # a restarted gw2 takes the dead gw0's share
    share = len(_SERVER_PORTS) // count
    start = _SERVER_PORTS.start + index * share
    return range(start, start + share)


_OWN_PORTS = _own_ports()
_next_port = _OWN_PORTS.start + random.randrange(len(_OWN_PORTS))  # runs don't replay ports
_port_lock = threading.Lock()


def free_port() -> int:
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that nothing listens on, none of them
    handed out before by this test process (until its share of the range wraps around)."""
    global _next_port
    with _port_lock:
        for _ in range(len(_OWN_PORTS)):
            first = _next_port
            if first + count > _OWN_PORTS.stop:
                first = _OWN_PORTS.start
            _next_port = first + count
            if all(_bindable(first + n) for n in range(count)):
                return first
    raise RuntimeError(f"no {count} free consecutive ports in {_OWN_PORTS}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def remove_bucket(s3: BotoS3Client, bucket: str) -> None:
    """Delete every object version and delete marker in ``bucket``, then the bucket."""
    while True:  # list afresh each time: paging on past deleted markers skips versions
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=1000)
        doomed: list[ObjectIdentifierTypeDef] = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        if not doomed:
            break
        s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


class RedisServer:
    """A private ``redis-server`` with its own port and directory."""

    def __init__(self, workdir: Path, *, appendonly: bool = False, password: str | None = None):
        self.binary = require_binary("redis-server", "apt-get install -y redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        wait_until(lambda: _port_open(self.port), 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


class MotoServer:
    """moto's S3 HTTP server in its own Python process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1),  # noqa: S310
            30,
            f"moto S3 server on port {self.port}",
        )
        return self

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


class TcpProxy:
    """A loopback TCP proxy that can be taken down and brought back on the same port.

    Down means the listening socket is closed and live connections are cut: clients see
    "connection refused", exactly as when the real endpoint is down.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            _close(self._listener)  # shutdown() wakes the thread blocked in accept()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                _close(conn)
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(10)


class EventSource(threading.Thread):
    """Pushes events one by one, as MinIO does: an event it cannot deliver is tried again."""

    def __init__(self, url: str, events: list[str], list_name: str, every: float) -> None:
        super().__init__(name="event-source", daemon=True)
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.events = events
        self.list_name = list_name
        self.every = every
        self.pushed = 0

    def run(self) -> None:
        try:
            for event in self.events:
                wait_until(partial(self._push, event), 60, "the broker to take an event")
                self.pushed += 1
                time.sleep(self.every)  # pacing a producer, not waiting for a condition
        finally:
            self.client.close()

    def _push(self, event: str) -> bool:
        try:
            self.client.rpush(self.list_name, event)
        except redis.ConnectionError:
            return False
        return True
