"""The private ``redis-server`` that ``labeler up`` starts when no configured Redis answers.

It persists under the data directory (append-only file, ``noeviction``), listens on loopback
only, and keeps its port across runs (``redis/port``) so the commands and a restarted stack
find it at the same address.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import redis

from labeler.supervision import StackFailed, SupervisedProcess

log = logging.getLogger(__name__)


def start_private_redis(
    workdir: Path, password: str | None, log_path: Path, *, name: str
) -> tuple[SupervisedProcess, str]:
    """Start it supervised, wait until it answers; returns the process and its URL.

    Raises:
        StackFailed: redis-server is not installed, or did not start (its log tail says why).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackFailed(
            "no Redis answers at LABELER_BROKER_URL (or LABELER_PRIVATE_REDIS is set) and "
            "redis-server is not installed: apt-get install -y redis-server"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = stable_port(workdir / "port")
    argv = [
        binary,
        str(_config(workdir, password)),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
    ]
    process = SupervisedProcess(name, argv, dict(os.environ), log_path)
    process.start()
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not _answers(url, password):
        if not process.running or time.monotonic() > deadline:
            raise StackFailed(
                f"private redis-server did not start; its log ends:\n{process.log_tail()}"
            )
        time.sleep(0.05)
    return process, url


def _config(workdir: Path, password: str | None) -> Path:
    """The private Redis's config file: the password, if one is set, goes here (readable by
    us alone) rather than on the command line, which every user of the machine can read; the
    commands and components then authenticate to it as to the configured one."""
    path = workdir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # also when an older file had other modes
    with os.fdopen(fd, "w") as config:
        if password:
            escaped = password.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            config.write(f'requirepass "{escaped}"\n')
    return path


def _answers(url: str, password: str | None = None) -> bool:
    client = redis.Redis.from_url(url, password=password, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def stable_port(path: Path) -> int:
    """The port stored at ``path`` if it is free, else a new free one (then stored)."""
    try:
        port = int(path.read_text().strip())
        if _bindable(port):
            return port
        log.warning("port %d of the private Redis is taken: choosing another", port)
    except (OSError, ValueError):
        pass
    port = _free_port()
    path.write_text(f"{port}\n")
    return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
