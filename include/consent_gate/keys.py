"""Keyed hashes that stand in for raw ids in everything consent-gate publishes.

HMAC-SHA256 with a secret held outside the data: without the secret a key cannot be linked back
to a user, yet the sweep, holding it, can find every row of a subject who withdrew.
"""

from __future__ import annotations

import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

HMAC_ENV = "CONSENT_GATE_HMAC_KEY"
MIN_SECRET_BYTES = 16


class MissingSecretError(RuntimeError):
    pass


class Keyer:
    """Computes keys for ids of one kind; the kind is part of the message so kinds never collide."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise MissingSecretError(f"the HMAC secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._cache: dict[tuple[str, str], str] = {}

    def key(self, kind: str, raw_id: str) -> str:
        cached = self._cache.get((kind, raw_id))
        if cached is None:
            message = f"{kind}\x1f{raw_id}".encode()
            cached = hmac.new(self._secret, message, sha256).hexdigest()
            if len(self._cache) < 1_000_000:  # bounded: ids repeat within a day, not forever
                self._cache[(kind, raw_id)] = cached
        return cached

    def keys_of(self, subjects: list[str]) -> list[str]:
        """The keys of `kind\x1fraw_id` strings (the message `key` hashes), uncached: a sweep keys millions
        of distinct subjects once each, which a cache would only hold in memory."""
        secret = self._secret
        return [hmac.digest(secret, subject.encode(), "sha256").hex() for subject in subjects]

    def user(self, user_id: str) -> str:
        return self.key("user", user_id)

    def account(self, account_id: str) -> str:
        return self.key("account", account_id)

    def meeting(self, meeting_id: str) -> str:
        return self.key("meeting", meeting_id)


def load_secret(key_file: Path | None) -> bytes:
    """The secret from $CONSENT_GATE_HMAC_KEY, else from `key_file`; fails when neither has one."""
    from_env = os.environ.get(HMAC_ENV)
    if from_env:
        return from_env.encode()
    if key_file is not None and key_file.exists():
        return key_file.read_bytes().strip()
    where = f" or create {key_file}" if key_file else ""
    raise MissingSecretError(f"no HMAC secret: set ${HMAC_ENV}{where} (`consent-gate sample` creates one)")


def create_secret_file(key_file: Path) -> None:
    """A new random secret, readable by the owner only; an existing one is kept."""
    if key_file.exists():
        return
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
