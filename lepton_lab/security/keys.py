"""Team key-encryption keys and per-user Ed25519 signing keys, read from disk for each use.

One directory holds them: ``teams/<team>.key`` (a team's key-encryption key),
``users/<user>.ed25519`` (a user's signing key) and ``public_keys.json`` (every
user's public key, each certified by the registry root key of
:mod:`lepton_lab.security.signing`, so a key written into that file by anyone but
the services is refused). Long-lived objects (``KeyRing``, the registry) only hold
paths; keys are dropped when an operation ends.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from lepton_lab import config
from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.security.files import locked, write_atomic, write_new
from lepton_lab.security.signing import RootKey, canonical_json

_TEAM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError, AttributeError):
        raise IntegrityError(f"{what} is not valid base64; the envelope was changed") from None


def _check_team(team: str) -> str:
    if not isinstance(team, str) or not _TEAM_RE.fullmatch(team):
        raise ConfigError(
            f"invalid team name {team!r}: use 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    return team


def _check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise ConfigError(
            f"invalid user name {user!r}: use 1-128 letters, digits, '.', '_', '@', '+' or '-'"
        )
    return user


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PublicKeyRecord:
    """One registered signing identity in ``public_keys.json``."""

    user: str
    public_key: str  # base64 of the 32 raw Ed25519 public key bytes
    created: str
    algorithm: str = "ed25519"
    certificate: str = ""  # the registry root's signature over the fields above

    def statement(self) -> bytes:
        """What the root key signs: every field but the certificate."""
        return canonical_json({k: v for k, v in dataclasses.asdict(self).items() if k != "certificate"})


@dataclass
class PublicKeyFile:
    """The shape of ``public_keys.json``."""

    keys: list[PublicKeyRecord] = field(default_factory=list)
    format: int = 1

    @classmethod
    def read(cls, path: Path) -> PublicKeyFile:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_bytes())
            return cls(keys=[PublicKeyRecord(**k) for k in raw["keys"]], format=raw["format"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} is damaged; restore it from a backup") from None

    def find(self, user: str) -> PublicKeyRecord | None:
        return next((k for k in self.keys if k.user == user), None)

    def to_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))


class KeyRing:
    """Per-team key-encryption keys and per-user Ed25519 signing keys in one directory.

    Layout: ``teams/<team>.key`` (32 random bytes, 0600), ``users/<user>.ed25519``
    (raw private key, 0600), ``public_keys.json`` (every user's public key).
    Keys are created on first use and read from disk for every operation.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else config.keys_path()

    def __repr__(self) -> str:
        return f"KeyRing({str(self.directory)!r})"

    # -- team keys ---------------------------------------------------------------

    def _team_key_path(self, team: str) -> Path:
        return self.directory / "teams" / f"{_check_team(team)}.key"

    def _read_team_key(self, team: str, *, create: bool) -> bytearray:
        path = self._team_key_path(team)
        if not path.exists():
            if not create:
                raise IntegrityError(f"there is no key for team {team} in {self.directory}")
            self._ensure_dirs(path.parent)
            # Two processes may race here; write_new lets exactly one key win.
            write_new(path, secrets.token_bytes(32))
        key = bytearray(path.read_bytes())
        if len(key) != 32:
            raise ConfigError(f"team key {path} is damaged (not 32 bytes); restore it")
        return key

    def key_id(self, team: str) -> str:
        """A short public fingerprint of the team key, recorded in every envelope."""
        key = self._read_team_key(team, create=True)
        try:
            return _kek_id(key)
        finally:
            key[:] = bytes(len(key))

    def wrap(self, team: str, data_key: bytes) -> tuple[str, bytes]:
        """Wrap ``data_key`` with the team key (RFC 3394); returns (key id, wrapped key)."""
        key = self._read_team_key(team, create=True)
        try:
            return _kek_id(key), aes_key_wrap(bytes(key), data_key)
        finally:
            key[:] = bytes(len(key))

    def unwrap(self, team: str, wrapped: bytes, key_id: str) -> bytes:
        """The data key inside ``wrapped``; IntegrityError if this team key did not wrap it."""
        key = self._read_team_key(team, create=False)
        try:
            if _kek_id(key) != key_id:
                raise IntegrityError(
                    f"the artifact was encrypted with another {team} team key "
                    f"(id {key_id}); this key ring has a different one"
                )
            return aes_key_unwrap(bytes(key), wrapped)
        except InvalidUnwrap:
            raise IntegrityError(
                f"the wrapped data key does not open with the {team} team key"
            ) from None
        finally:
            key[:] = bytes(len(key))

    # -- signing keys ------------------------------------------------------------

    @property
    def root(self) -> RootKey:
        """The registry root key, which certifies public keys and signs alias logs."""
        return RootKey(self.directory)

    @property
    def public_keys_path(self) -> Path:
        return self.directory / "public_keys.json"

    def signing_key(self, user: str) -> Ed25519PrivateKey:
        """The user's Ed25519 private key, created and registered on first use."""
        path = self.directory / "users" / f"{_check_user(user)}.ed25519"
        self._ensure_dirs(path.parent)
        with locked(self.public_keys_path):
            registry = PublicKeyFile.read(self.public_keys_path)
            record = registry.find(user)
            if path.exists():
                key = _load_private(path)
            elif record is not None:
                raise ConfigError(
                    f"{user} has a registered public key but no signing key in "
                    f"{path.parent}; restore {path.name} from a backup"
                )
            else:
                key = Ed25519PrivateKey.generate()
                raw = key.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
                write_atomic(path, raw)
            public = _b64(_public_raw(key.public_key()))
            if record is not None and record.public_key != public:
                raise IntegrityError(
                    f"the signing key of {user} does not match the registered public key; "
                    "restore the original key file"
                )
            if record is None or not record.certificate:
                # Only a key whose private half the services hold is ever certified.
                fresh = PublicKeyRecord(user=user, public_key=public,
                                        created=record.created if record else _now())
                fresh = dataclasses.replace(
                    fresh, certificate=self.root.sign("public-key", fresh.statement()))
                registry.keys = [k for k in registry.keys if k.user != user] + [fresh]
                write_atomic(self.public_keys_path, registry.to_bytes(), mode=0o644)
        return key

    def public_key(self, user: str) -> Ed25519PublicKey:
        """The registered public key of ``user``; NotFound if the user never signed here."""
        record = PublicKeyFile.read(self.public_keys_path).find(_check_user(user))
        if record is None:
            raise NotFound(f"no public key is registered for {user}")
        self.root.verify("public-key", record.statement(), record.certificate,
                         f"the public key registered for {user}")
        try:
            return Ed25519PublicKey.from_public_bytes(_unb64(record.public_key, "public key"))
        except (ValueError, IntegrityError):
            raise ConfigError(f"the registered public key of {user} is damaged") from None

    def held_public_key(self, user: str) -> Ed25519PublicKey:
        """The key that checks signatures ``user`` made before public keys were certified; writes nothing.

        A certified record's key as :meth:`public_key` gives it; else an uncertified
        record's, only if the services hold its private half (what :meth:`signing_key`
        would certify on the user's next use). IntegrityError otherwise.
        """
        record = PublicKeyFile.read(self.public_keys_path).find(_check_user(user))
        if record is not None and record.certificate:
            return self.public_key(user)
        path = self.directory / "users" / f"{user}.ed25519"
        if record is None or not path.exists():
            raise IntegrityError(f"the services hold no signing key of {user}, so nothing {user} signed can be "
                                 "checked; restore their key file from a backup")
        public = _load_private(path).public_key()
        if _b64(_public_raw(public)) != record.public_key:
            raise IntegrityError(f"the public key registered for {user} is not the one of the signing key the "
                                 "services hold; it was replaced")
        return public

    def users(self) -> list[str]:
        """Users with a registered public key."""
        return sorted(k.user for k in PublicKeyFile.read(self.public_keys_path).keys)

    def _ensure_dirs(self, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _kek_id(key: bytes | bytearray) -> str:
    return hashlib.sha256(b"lepton-kek-id:" + bytes(key)).hexdigest()[:16]


def _load_private(path: Path) -> Ed25519PrivateKey:
    raw = path.read_bytes()
    try:
        return Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise ConfigError(f"signing key {path} is damaged; restore it from a backup") from None


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


__all__ = ["KeyRing", "PublicKeyFile", "PublicKeyRecord"]
