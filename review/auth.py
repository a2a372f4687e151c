"""Reviewer accounts: scrypt password hashes, from the environment or a file of hashes.

A line is ``name:scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64 salt and hash); ``labeler review
hash-password`` prints one. Plain-text passwords are never accepted as configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from storage import PermanentError

_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~50 ms and 16 MB per check on this machine's CPUs
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_SECRET_BYTES = 32
# Values people copy from .env.example or docs instead of making a real secret.
_PLACEHOLDERS = ("change-me", "replace-with", "changeme", "secret", "password")
# How to make a real key, for messages: what `labeler review gen-secret` does.
KEY_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


class InvalidCredentials(PermanentError, ValueError):
    """A reviewer line that cannot be used; the message says which and why."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``scrypt$n$r$p$salt$hash``."""
    if not password:
        raise ValueError("a password must not be empty")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(
        ["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)],
    )


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the ``scrypt$...`` string ``stored``."""
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(expected),
        maxmem=64 * 1024 * 1024,
    )
    return hmac.compare_digest(actual, expected)


class Reviewers:
    """Who may sign in. Empty means no credentials: the app then serves 127.0.0.1 only."""

    def __init__(self, hashes: dict[str, str]) -> None:
        self._hashes = dict(hashes)
        # Unknown names still cost one scrypt, so response time does not tell who exists.
        self._decoy = hash_password(secrets.token_hex(8)) if hashes else ""

    @classmethod
    def parse(cls, lines: Iterable[str], where: str) -> Reviewers:
        """Read ``name:hash`` entries (blank lines and ``#`` comments are skipped)."""
        hashes: dict[str, str] = {}
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, stored = line.partition(":")
            if not _NAME.fullmatch(name):
                raise InvalidCredentials(f"{where}, entry {number}: {name!r} is not a valid name")
            if not _well_formed(stored):
                raise InvalidCredentials(
                    f"{where}, entry {number} ({name}): not a scrypt hash; make one with "
                    "`labeler review hash-password`"
                )
            hashes[name] = stored
        return cls(hashes)

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def fingerprint(self, name: str) -> str | None:
        """A digest of ``name``'s stored hash (None if not a reviewer): a session made before a
        password change or removal no longer matches it."""
        stored = self._hashes.get(name)
        if stored is None:
            return None
        return hashlib.sha256(f"{name}:{stored}".encode()).hexdigest()[:32]

    def check(self, name: str, password: str) -> bool:
        stored = self._hashes.get(name)
        if stored is None:
            if self._decoy:
                verify_password(password, self._decoy)
            return False
        return verify_password(password, stored)


def weak_secret(secret: str) -> str | None:
    """Why ``secret`` may not sign anything (a known placeholder, or too short), or None."""
    lowered = secret.lower()
    if any(lowered.startswith(p) for p in _PLACEHOLDERS):
        return "is a placeholder from the examples"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def _well_formed(stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(p.isdigit() for p in parts[1:4]):
        return False
    try:
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
