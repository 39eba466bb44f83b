"""The registry's root key: what the service alone vouches for.

One Ed25519 key (``root.ed25519``, 0600, in the key directory the services own)
signs three kinds of statements:

- ``public-key``: "this public key belongs to this user", so the set of signing
  keys is authenticated and a key pasted into ``public_keys.json`` is refused;
- ``registry-log``: each entry of a model's alias log (a publish with the
  permission it was granted under, an alias move, a deletion);
- nothing else: every statement carries its purpose, so one kind can never be
  passed off as another.

Witnesses (``witness/<registry>/<team>/<model>``, beside the key) remember how
long each log was when the service last wrote it, so a log cut back to an
earlier, validly signed state is refused too.

Manifests are signed with per-user Ed25519 keys (:func:`sign_manifest`,
:func:`verify_manifest`, keys from :class:`~lepton_lab.security.keys.KeyRing`)
over their :func:`canonical_json` bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.security.files import write_atomic, write_new

ROOT_KEY = "root.ed25519"
#: The root's public half, for verifiers that hold no private key (a copy of the key directory's public files).
ROOT_PUBLIC = "root.pub"
PURPOSES = ("public-key", "registry-log")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of ``obj`` that gets signed: sorted keys, no spaces, UTF-8.

    Raises ConfigError for values JSON cannot carry exactly (NaN, infinity,
    arbitrary objects), because a signature over an approximation is worthless.
    """
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"value cannot be stored as canonical JSON: {err}") from None
    return text.encode("utf-8")


class Signers(Protocol):
    """Where users' signing keys are found (a :class:`~lepton_lab.security.keys.KeyRing`)."""

    def signing_key(self, user: str) -> Ed25519PrivateKey: ...

    def public_key(self, user: str) -> Ed25519PublicKey: ...


def _message(purpose: str, statement: bytes) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown root statement purpose {purpose!r}")
    return b"lepton-root/1\x00" + purpose.encode() + b"\x00" + bytes(statement)


def _verify(public: Ed25519PublicKey, purpose: str, statement: bytes, signature: str, what: str) -> None:
    try:
        raw = base64.b64decode(str(signature).encode("ascii"), validate=True)
        public.verify(raw, _message(purpose, statement))
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        raise IntegrityError(
            f"{what} is not signed by this registry's root key; it was written outside Lepton"
        ) from None


class RootKey:
    """The root signing key in ``directory``; created on first signature, read per use."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / ROOT_KEY

    def _private(self, *, create: bool) -> Ed25519PrivateKey:
        if not self.path.exists():
            if not create:
                raise IntegrityError(
                    f"there is no registry root key in {self.directory}; nothing signed here verifies"
                )
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            raw = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption())
            write_new(self.path, raw)  # two processes racing: one key wins
        try:
            key = Ed25519PrivateKey.from_private_bytes(self.path.read_bytes())
        except ValueError:
            raise ConfigError(f"the registry root key {self.path} is damaged; restore it") from None
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if not (self.directory / ROOT_PUBLIC).exists():
            write_atomic(self.directory / ROOT_PUBLIC, public, mode=0o644)
        return key

    def _public(self) -> Ed25519PublicKey:
        """The root public key: from the private key where it is held, else from ``root.pub``."""
        if self.path.exists():
            return self._private(create=False).public_key()
        try:
            return Ed25519PublicKey.from_public_bytes((self.directory / ROOT_PUBLIC).read_bytes())
        except FileNotFoundError:
            raise IntegrityError(
                f"there is no registry root key in {self.directory}; nothing signed here verifies"
            ) from None
        except ValueError:
            raise ConfigError(f"the registry root public key in {self.directory} is damaged") from None

    def sign(self, purpose: str, statement: bytes) -> str:
        """The root's base64 signature over ``statement`` for ``purpose``."""
        signature = self._private(create=True).sign(_message(purpose, statement))
        return base64.b64encode(signature).decode("ascii")

    def verify(self, purpose: str, statement: bytes, signature: str, what: str) -> None:
        """Return quietly if the root signed ``statement`` for ``purpose``; IntegrityError naming ``what``."""
        self.verifier()(purpose, statement, signature, what)

    def verifier(self) -> Callable[[str, bytes, str, str], None]:
        """:meth:`verify` with the key read once, for checking many statements in a row."""
        public = self._public()

        def verify(purpose: str, statement: bytes, signature: str, what: str) -> None:
            _verify(public, purpose, statement, signature, what)

        return verify

    # -- witnesses --------------------------------------------------------------

    def _witness(self, registry: Path, team: str, model: str) -> Path:
        where = hashlib.sha256(str(Path(registry).resolve()).encode()).hexdigest()[:16]
        return self.directory / "witness" / where / team / model

    def witness(self, registry: Path, team: str, model: str) -> tuple[int, str] | None:
        """(entries, hash of the last one) of a model's log when last written, if known."""
        try:
            raw = json.loads(self._witness(registry, team, model).read_bytes())
            return int(raw["seq"]), str(raw["hash"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"the log witness of {team}/{model} is damaged; restore it") from None

    def remember(self, registry: Path, team: str, model: str, seq: int, head: str) -> None:
        """Record that the log of ``team/model`` now has ``seq`` entries ending in ``head``."""
        path = self._witness(registry, team, model)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps({"seq": seq, "hash": head}).encode())


def sign_manifest(manifest_bytes: bytes, user: str, keyring: Signers) -> bytes:
    """A 64-byte Ed25519 signature by ``user`` over exactly ``manifest_bytes``."""
    return keyring.signing_key(user).sign(bytes(manifest_bytes))


def verify_manifest(manifest_bytes: bytes, signature: bytes, user: str, keyring: Signers) -> None:
    """Return quietly if ``user`` signed ``manifest_bytes``; IntegrityError otherwise."""
    try:
        public = keyring.public_key(user)
    except (NotFound, ConfigError):
        raise IntegrityError(
            f"the manifest names signer {user!r}, who has no valid registered public key"
        ) from None
    try:
        public.verify(bytes(signature), bytes(manifest_bytes))
    except InvalidSignature:
        raise IntegrityError(
            f"the manifest signature of {user} does not verify; "
            "the manifest or its signature was changed"
        ) from None


__all__ = ["PURPOSES", "ROOT_KEY", "RootKey", "Signers", "canonical_json", "sign_manifest", "verify_manifest"]
