"""The stack record, the data directory's lock and the private Redis's stable port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labeler.private_redis import stable_port
from labeler.stack_record import (
    StackRecord,
    StackRunning,
    lock_data_dir,
    read_record,
    record_path,
    remove_record,
    write_record,
)


def _record(pid: int) -> StackRecord:
    return StackRecord(
        pid=pid, data_dir="/d", broker_url="redis://127.0.0.1:7000/0", private_redis=True
    )


def test_a_record_is_read_back_while_its_process_lives_and_is_stale_after(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_record(tmp_path, _record(child.pid))
        found = read_record(tmp_path)
        assert found is not None
        assert found.broker_url == "redis://127.0.0.1:7000/0"
        assert [p.name for p in record_path(tmp_path).parent.iterdir()] == ["stack.json"]
    finally:
        child.kill()
        child.wait()
    assert read_record(tmp_path) is None
    stale = read_record(tmp_path, stale=True)
    assert stale is not None
    assert stale.pid == child.pid
    remove_record(tmp_path)
    assert read_record(tmp_path, stale=True) is None


def test_a_second_lock_on_a_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path)
    try:
        write_record(tmp_path, _record(held_pid := int(Path(held.name).read_text())))
        with pytest.raises(StackRunning, match=f"pid {held_pid} using the broker at redis://"):
            lock_data_dir(tmp_path)
    finally:
        held.close()
    lock_data_dir(tmp_path).close()  # released: the next one gets it


def test_the_private_redis_port_is_kept_unless_taken(tmp_path: Path) -> None:
    path = tmp_path / "port"
    first = stable_port(path)
    assert stable_port(path) == first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        second = stable_port(path)
    assert second != first
    assert path.read_text().strip() == str(second)


def test_the_private_redis_asks_for_the_configured_password_without_showing_it(
    tmp_path: Path,
) -> None:
    import redis

    from labeler.settings import load_settings
    from labeler.stack import Stack

    password = 'pass word "with" \\ quotes'
    settings = load_settings(data_dir=tmp_path, redis_password=password, private_redis=True)
    with Stack(settings, [], env={}) as stack:
        assert redis.Redis.from_url(stack.broker_url, password=password).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(stack.broker_url).ping()
        assert stack._redis is not None
        command_line = Path(f"/proc/{stack._redis.pid}/cmdline").read_bytes()
        assert b"quotes" not in command_line
        assert (tmp_path / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600


def test_a_data_dir_that_remembers_its_own_redis_keeps_to_it_though_another_answers(
    tmp_path: Path, redis_url: str
) -> None:
    """The demo's case: its review queue lives in DATA_DIR/redis, and some other Redis answers
    at the configured URL; the stack, its children and the commands all use the former."""
    import redis

    from labeler.cli_common import find_broker
    from labeler.settings import load_settings
    from labeler.settings_sources import remember
    from labeler.stack import Component, Stack

    remember(tmp_path, model_name="digits", private_redis=True)
    settings = load_settings(data_dir=tmp_path, broker_url=redis_url)
    assert (settings.model_name, settings.private_redis) == ("digits", True)
    assert redis.Redis.from_url(redis_url).ping()  # the other Redis answers
    base = {"KEPT": "1"}
    with Stack(settings, [], env=base) as stack:
        assert stack.broker_url != redis_url
        assert redis.Redis.from_url(stack.broker_url).ping()
        assert find_broker(settings).broker_url == stack.broker_url
        review = Component("review", ("review",), 8399, port_setting="review_port")
        env = stack.child_env(review)
        assert env["LABELER_BROKER_URL"] == stack.broker_url
        assert env["LABELER_DATA_DIR"] == str(tmp_path.resolve())
        assert env["LABELER_REVIEW_PORT"] == "8399"
        assert "LABELER_METRICS_PORT" not in env  # the review app's port is its own setting
        assert env["KEPT"] == "1"
    assert base == {"KEPT": "1"}, "the caller's environment is never changed"
