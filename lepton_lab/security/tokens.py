"""Personal access tokens for scripts and kernels that call the REST API as a user.

A token reads ``lpt_<id>_<secret>``: ``id`` is 12 hex characters, not secret,
used to find the stored record; ``secret`` is 256 random bits. The store
keeps only a Scrypt hash of each token with its own salt, so a copy of the
file does not let anyone act as a user. Tokens are shown once, by ``add``.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from lepton_lab.config import tokens_path
from lepton_lab.errors import ConfigError, NotFound
from lepton_lab.security.files import locked, write_atomic

#: Prefix of personal access tokens, so a leaked one is easy to recognise and scan for.
TOKEN_PREFIX = "lpt_"

# Interactive-login strength (about 16 MiB and 50 ms per check); the cache in
# TokenStore keeps repeated requests with the same token cheap.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_ID_BYTES = 6


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: whose it is, its id and when it was made."""

    token_id: str
    user: str
    created: str  # ISO 8601, UTC


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored in the file: the Scrypt hash and its parameters, never the token."""

    token_id: str
    user: str
    created: str
    salt: str  # base64
    hash: str  # base64
    n: int = _SCRYPT_N
    r: int = _SCRYPT_R
    p: int = _SCRYPT_P

    def info(self) -> TokenInfo:
        return TokenInfo(self.token_id, self.user, self.created)


class TokenStore:
    """The personal access tokens kept at ``path`` (default ``config.tokens_path()``), 0600."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(tokens_path() if path is None else path)
        # sha256(token) -> user for tokens already checked against the current file;
        # dropped whenever the file changes (every write replaces it).
        self._cache: dict[str, str] = {}
        self._cache_key: tuple[int, int, int] | None = None

    def add(self, user: str) -> str:
        """Make a new token for ``user`` and return it; this is the only time it can be read."""
        if not isinstance(user, str) or not user.strip():
            raise ConfigError("a token needs a non-empty user name")
        token_id = secrets.token_hex(_ID_BYTES)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        salt = os.urandom(16)
        record = TokenRecord(
            token_id=token_id,
            user=user,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            salt=base64.b64encode(salt).decode(),
            hash=base64.b64encode(_derive(token, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)).decode(),
        )
        with locked(self.path):
            records = self._read()
            records.append(record)
            self._write(records)
        return token

    def verify(self, token: str) -> str | None:
        """The user a token belongs to, or None for a malformed, unknown or revoked token."""
        token_id = _parse(token)
        if token_id is None:
            return None
        user = self.cached(token)
        if user is not None:
            return user
        record = next((r for r in self._read() if r.token_id == token_id), None)
        if record is None:
            # Spend the same work as for a known id, so timing does not tell ids apart.
            _derive(token, b"\0" * 16, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
            return None
        expected = base64.b64decode(record.hash)
        actual = _derive(token, base64.b64decode(record.salt), record.n, record.r, record.p)
        if not hmac.compare_digest(actual, expected):
            return None
        self._cache[_digest(token)] = record.user
        return record.user

    def cached(self, token: str) -> str | None:
        """The user of a token already verified against the current file, or None.

        No key derivation: cheap enough for an event loop. None means "ask
        :meth:`verify`", not "invalid".
        """
        if _parse(token) is None:
            return None
        self._drop_cache_if_changed()
        return self._cache.get(_digest(token))

    def revoke(self, user: str, token_id: str | None = None) -> int:
        """Revoke every token of ``user`` (or only ``token_id``); returns how many were removed.

        NotFound when ``token_id`` is given and is not one of the user's.
        """
        with locked(self.path):
            records = self._read()
            keep = [r for r in records if r.user != user or (token_id is not None and r.token_id != token_id)]
            removed = len(records) - len(keep)
            if token_id is not None and removed == 0:
                raise NotFound(f"{user} has no token {token_id}; list them with TokenStore.list()")
            if removed:
                self._write(keep)
        return removed

    def list(self, user: str | None = None) -> list[TokenInfo]:
        """Tokens of every user (or of ``user``): ids and dates, never secrets or hashes."""
        return [r.info() for r in self._read() if user is None or r.user == user]

    def _drop_cache_if_changed(self) -> None:
        # Every write replaces the file, so a new inode, size or mtime means tokens may be gone.
        try:
            stat = self.path.stat()
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            key = None
        if key != self._cache_key:
            self._cache, self._cache_key = {}, key

    # `builtins.list`: inside the class, `list` is the method above.
    def _read(self) -> builtins.list[TokenRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [TokenRecord(**item) for item in data["tokens"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.path}: not a token file; move it aside (its tokens stop working) and add new tokens"
            ) from None

    def _write(self, records: builtins.list[TokenRecord]) -> None:
        data = {"version": 1, "tokens": [asdict(r) for r in records]}
        write_atomic(self.path, json.dumps(data, indent=1).encode(), mode=0o600)


def _parse(token: object) -> str | None:
    """The id inside a well-formed token, else None."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    token_id, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if len(token_id) != 2 * _ID_BYTES or not secret or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id


def _digest(token: str) -> str:
    """The key of a verified token in the in-memory cache (never stored on disk)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _derive(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(token.encode())


__all__ = ["TOKEN_PREFIX", "TokenInfo", "TokenRecord", "TokenStore"]


class KernelTokens:
    """Tokens a server hands the kernels it starts for users other than its owner.

    Such a kernel must reach the server as the user who started it, never with the
    server's own token (its owner's identity). Each token lives in this process's memory
    only, for as long as its kernel runs.
    """

    PREFIX = "lkt_"

    def __init__(self) -> None:
        self._users: dict[str, str] = {}  # sha256(token) -> user
        self._by_kernel: dict[str, str] = {}  # kernel id -> sha256(token)
        self._lock = threading.Lock()

    def issue(self, user: str) -> tuple[str, str]:
        """A new token for ``user``: ``(token, handle)``; bind the handle to a kernel with :meth:`bind`."""
        token = self.PREFIX + secrets.token_urlsafe(32)
        handle = _digest(token)
        with self._lock:
            self._users[handle] = user
        return token, handle

    def bind(self, handle: str, kernel_id: str) -> None:
        with self._lock:
            self._by_kernel[kernel_id] = handle

    def user_of(self, token: str) -> str | None:
        if not token.startswith(self.PREFIX):
            return None
        with self._lock:
            return self._users.get(_digest(token))

    def revoke(self, handle: str) -> None:
        with self._lock:
            self._users.pop(handle, None)

    def revoke_kernel(self, kernel_id: str) -> None:
        with self._lock:
            handle = self._by_kernel.pop(kernel_id, None)
            if handle is not None:
                self._users.pop(handle, None)
