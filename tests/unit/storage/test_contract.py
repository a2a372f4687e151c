"""The object-store contract (``tests/support/store_contract.py``, ``store_conditional.py``)
against a directory and the in-memory store; and what only the local store's lock proves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage import LocalStore, WriteConflict
from tests.support.store_conditional import *  # noqa: F403 - the shared contract's tests
from tests.support.store_contract import *  # noqa: F403


def test_local_racing_writers_from_one_read_exactly_one_wins(tmp_path: Path) -> None:
    # Many threads each read v0 and try to replace it; the lock makes compare+rename one step.
    store = LocalStore(tmp_path / "store")
    base = store.put("race.json", b"v0").etag

    def attempt(n: int) -> bool:
        try:
            store.put("race.json", f"writer {n}".encode(), if_match=base)
        except WriteConflict:
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        wins = list(pool.map(attempt, range(64)))

    assert wins.count(True) == 1
    winner = wins.index(True)
    assert store.get("race.json").data == f"writer {winner}".encode()
