"""Envelope encryption and signatures for artifacts that leave a notebook.

Every artifact gets a fresh random 256-bit data key. The data key is wrapped
with the team's key-encryption key using AES key wrap (RFC 3394,
``cryptography``'s ``aes_key_wrap``), and the artifact is encrypted with
AES-256-GCM in chunks. On disk an envelope is::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (canonical JSON)
    | chunk 0 ciphertext + tag | chunk 1 ciphertext + tag | ... | final chunk + tag

Each chunk's nonce is an 8-byte random prefix followed by the 4-byte chunk
counter. Its associated data is SHA-256(magic, length, header) + the chunk index
+ a final-chunk flag, so a changed header, a dropped tail, reordered or swapped
chunks, or bytes appended after the final chunk all fail authentication.
The SHA-256 of the plaintext, computed while encrypting and again while
decrypting, ties the content to a signed manifest: even someone holding the
team key cannot put other content under it.

Manifests are signed with per-user Ed25519 keys; public keys live in one file
(``public_keys.json``) so a verifier never needs anyone's private key, and each
is certified by the registry root key (:mod:`lepton_lab.security.signing`), so
a key written into that file by anyone but the services is refused.

Keys are read from disk for each operation and dropped when it ends: long-lived
objects (``KeyRing``, the registry) only hold paths.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import queue
import re
import secrets
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from lepton_lab import config
from lepton_lab.errors import ConfigError, IntegrityError, NotFound
from lepton_lab.security.files import locked, write_atomic, write_new
from lepton_lab.security.signing import RootKey

#: Plaintext bytes per encrypted chunk; memory use of a stream is a few of these.
CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024

MAGIC = b"LPTNENV1"
ENVELOPE_FORMAT = "lepton-envelope/1"
TAG_SIZE = 16
_NONCE_PREFIX_SIZE = 8
_MAX_HEADER_SIZE = 64 * 1024
_MAX_CHUNKS = 2**32  # the counter is 4 bytes of the 12-byte nonce

_TEAM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


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


# --------------------------------------------------------------------------- keys


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


# --------------------------------------------------------------------------- signatures


def sign_manifest(manifest_bytes: bytes, user: str, keyring: KeyRing) -> bytes:
    """A 64-byte Ed25519 signature by ``user`` over exactly ``manifest_bytes``."""
    return keyring.signing_key(user).sign(bytes(manifest_bytes))


def verify_manifest(manifest_bytes: bytes, signature: bytes, user: str, keyring: KeyRing) -> None:
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


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class EnvelopeHeader:
    """What a reader needs to open an envelope: team, wrapped data key, nonce prefix."""

    team: str
    kek_id: str
    wrapped_key: str  # base64, AES key wrap (RFC 3394) of the data key
    nonce_prefix: str  # base64, 8 random bytes
    chunk_size: int
    cipher: str = "AES-256-GCM"
    key_wrap: str = "AES-KW"
    format: str = ENVELOPE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> EnvelopeHeader:
        """Parse an untrusted header; IntegrityError for anything unexpected."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            raise IntegrityError("the envelope header is malformed; the artifact was changed")
        header = cls(**raw)
        if (
            header.format != ENVELOPE_FORMAT
            or header.cipher != "AES-256-GCM"
            or header.key_wrap != "AES-KW"
            or not isinstance(header.chunk_size, int)
            or isinstance(header.chunk_size, bool)
            or not MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE
            or not all(
                isinstance(v, str)
                for v in (header.team, header.kek_id, header.wrapped_key, header.nonce_prefix)
            )
        ):
            raise IntegrityError("the envelope header is not one this version can open")
        return header

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class StreamDigest:
    """One envelope's plaintext size and SHA-256, and its size as stored.

    The stored bytes need no digest of their own: every chunk's GCM tag
    authenticates them, bound to the header, the chunk index and the final flag.
    """

    size: int
    sha256: str
    stored_size: int


class _BackgroundSha256:
    """SHA-256 fed from a queue on its own thread.

    hashlib releases the GIL on large buffers, so hashing runs on the second
    core while the caller encrypts (AES-GCM is several times faster than
    SHA-256 here, so hashing is what bounds a stream).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=1)  # bounds memory to ~2 chunks
        self._error: BaseException | None = None
        self.size = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="lepton-sha256")
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._hash.update(item)
            except BaseException as err:  # keep draining so producers never block
                self._error = err
            finally:
                self._queue.task_done()

    def update(self, data) -> None:
        self.size += len(data)
        self._queue.put(data)

    def wait(self) -> None:
        """Block until every buffer handed over so far is hashed."""
        self._queue.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _envelope_prefix(header_bytes: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes


class SealedWriter:
    """A write-only stream that encrypts everything written to it into ``dst``.

    Use it where a library wants a file to write into (``torch.save``), so
    the plaintext never touches disk. ``close()`` seals the final chunk and
    returns ``(header, digest)``; until then the envelope is incomplete.
    """

    def __init__(self, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE):
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        data_key = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = keyring.wrap(team, data_key)
        self._aead = AESGCM(data_key)
        del data_key
        self._prefix = secrets.token_bytes(_NONCE_PREFIX_SIZE)
        self.header = EnvelopeHeader(
            team=team,
            kek_id=kek_id,
            wrapped_key=_b64(wrapped),
            nonce_prefix=_b64(self._prefix),
            chunk_size=chunk_size,
        )
        self._dst = dst
        self._chunk_size = chunk_size
        self._index = 0
        self._pending: bytes | bytearray = b""
        self._closed = False
        prefix = _envelope_prefix(self.header.to_bytes())
        self._header_digest = hashlib.sha256(prefix).digest()
        self._plain = _BackgroundSha256()
        self._stored_size = 0
        try:
            self._emit(prefix)
        except BaseException:
            self.abort()
            raise

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing to do: a chunk is written as soon as it is known not to be the last."""

    def write(self, data) -> int:
        """Encrypt ``data`` (any bytes-like object); returns the number of bytes taken."""
        if self._closed:
            raise ValueError("write to a closed SealedWriter")
        view = memoryview(data).cast("B")
        n, pos, size = len(view), 0, self._chunk_size
        borrowed = not isinstance(data, bytes)
        if self._pending and n:
            if len(self._pending) < size:
                if not isinstance(self._pending, bytearray):
                    self._pending = bytearray(self._pending)
                pos = min(size - len(self._pending), n)
                self._pending += view[:pos]
            if len(self._pending) == size and pos < n:
                # A new object replaces it, so the hashing thread may keep this one.
                self._seal(self._pending, final=False)
                self._pending = b""
        # A chunk is sealed only once a byte after it exists: the last one is final.
        while n - pos > size:
            self._seal(view[pos : pos + size], final=False)
            pos += size
        if pos < n:
            self._pending = data if pos == 0 and not borrowed else bytes(view[pos:])
        if borrowed:
            # The caller may reuse its buffer once write returns.
            self._plain.wait()
        return n

    def close(self) -> tuple[EnvelopeHeader, StreamDigest]:
        """Seal the final chunk; returns the header and the digests of the stream."""
        if self._closed:
            raise ValueError("SealedWriter is already closed")
        try:
            self._seal(self._pending, final=True)
            self._pending = b""
            digest = StreamDigest(
                size=self._plain.size,
                sha256=self._plain.hexdigest(),
                stored_size=self._stored_size,
            )
        finally:
            self.abort()
        return self.header, digest

    def abort(self) -> None:
        """Stop the hashing thread without sealing (after an error)."""
        self._closed = True
        self._plain.close()

    def _seal(self, chunk, *, final: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise ConfigError("artifact too large for this chunk size; raise chunk_size")
        self._plain.update(chunk)
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._index), chunk, _aad(self._header_digest, self._index, final)
        )
        self._index += 1
        self._emit(sealed)

    def _emit(self, data: bytes) -> None:
        self._stored_size += len(data)
        self._dst.write(data)


def seal_stream(
    src: BinaryIO, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE
) -> tuple[EnvelopeHeader, StreamDigest]:
    """Encrypt ``src`` into ``dst``; returns the header and the plaintext/stored digests."""
    writer = SealedWriter(dst, team, keyring, chunk_size=chunk_size)
    try:
        while data := src.read(chunk_size):
            writer.write(data)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def encrypt_stream(
    src: BinaryIO, dst: BinaryIO, team: str, keyring: KeyRing, *, chunk_size: int = CHUNK_SIZE
) -> EnvelopeHeader:
    """Encrypt ``src`` into ``dst`` for ``team`` in O(chunk_size) memory; returns the header."""
    return seal_stream(src, dst, team, keyring, chunk_size=chunk_size)[0]


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if data is None or len(data) == n or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_header(src: BinaryIO) -> EnvelopeHeader:
    """Read and parse the header at the start of an envelope; IntegrityError if malformed."""
    return _read_header(src)[0]


def _read_header(src: BinaryIO) -> tuple[EnvelopeHeader, bytes]:
    lead = _read_exact(src, len(MAGIC) + 4)
    if len(lead) != len(MAGIC) + 4 or lead[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a Lepton envelope, or its header was changed")
    (length,) = struct.unpack(">I", lead[len(MAGIC) :])
    if length > _MAX_HEADER_SIZE:
        raise IntegrityError("the envelope header length is implausible; the artifact was changed")
    header_bytes = _read_exact(src, length)
    if len(header_bytes) != length:
        raise IntegrityError("the envelope is truncated inside its header")
    try:
        raw = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(
            "the envelope header is not valid JSON; the artifact was changed"
        ) from None
    header = EnvelopeHeader.from_dict(raw)
    if header.to_bytes() != header_bytes:
        raise IntegrityError(
            "the envelope header is not in canonical form; the artifact was changed"
        )
    return header, lead + header_bytes


def _open_into(
    src: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None,
    dst: BinaryIO | _Discard | None = None,
    into: bytearray | None = None,
) -> StreamDigest:
    """Decrypt ``src`` chunk by chunk into the file ``dst`` or the buffer ``into``.

    Raises IntegrityError on the first bad chunk; whatever was written by then
    is unauthenticated and must be thrown away by the caller (the public
    functions below make sure it never reaches theirs).
    """
    header, prefix = _read_header(src)
    if header.team != team:
        raise IntegrityError(f"the artifact is sealed for another team, not {team}")
    if expected_header is not None and header != expected_header:
        raise IntegrityError("the envelope header does not match the signed manifest")
    data_key = keyring.unwrap(team, _unb64(header.wrapped_key, "wrapped key"), header.kek_id)
    aead = AESGCM(data_key)
    del data_key
    nonce_prefix = _unb64(header.nonce_prefix, "nonce prefix")
    if len(nonce_prefix) != _NONCE_PREFIX_SIZE:
        raise IntegrityError("the envelope nonce prefix is malformed")
    header_digest = hashlib.sha256(prefix).digest()
    block = header.chunk_size + TAG_SIZE
    out = memoryview(into) if into is not None else None
    offset = 0
    plain = _BackgroundSha256()
    stored_size = len(prefix)
    try:
        index = 0
        current = _read_exact(src, block)
        while True:
            # Read one block ahead: a chunk is final exactly when nothing follows it.
            ahead = _read_exact(src, block) if len(current) == block else b""
            final = not ahead
            if len(current) < TAG_SIZE or index >= _MAX_CHUNKS:
                raise IntegrityError(f"the artifact is truncated at chunk {index}")
            stored_size += len(current)
            nonce, aad = _nonce(nonce_prefix, index), _aad(header_digest, index, final)
            chunk: bytes | memoryview
            try:
                if out is not None:
                    n = len(current) - TAG_SIZE
                    if offset + n > len(out):
                        raise IntegrityError("the artifact is longer than its signed size")
                    chunk = out[offset : offset + n]
                    aead.decrypt_into(nonce, current, aad, chunk)
                else:
                    chunk = aead.decrypt(nonce, current, aad)
                    assert dst is not None, "either dst or into is given"
                    dst.write(chunk)
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {index} of the artifact failed authentication: "
                    "it was changed, truncated, reordered or extended"
                ) from None
            offset += len(chunk)
            plain.update(chunk)
            if final:
                break
            current = ahead
            index += 1
        return StreamDigest(size=offset, sha256=plain.hexdigest(), stored_size=stored_size)
    finally:
        plain.close()


def _check(digest: StreamDigest, expected: StreamDigest | None) -> None:
    if expected is None:
        return
    if (
        digest.size != expected.size
        or digest.stored_size != expected.stored_size
        or digest.sha256 != expected.sha256
    ):
        raise IntegrityError(
            "the artifact does not match the sizes and SHA-256 digest it was signed with"
        )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Decrypt the envelope in ``src`` into ``dst``; returns the digests.

    The plaintext goes to an anonymous temporary file first and reaches
    ``dst`` only after the last tag verified (and ``expected`` matched, when
    given), so on IntegrityError ``dst`` has received nothing. Memory stays at
    a few chunks whatever the size.
    """
    # Spool beside the destination when it is a named file: same disk, same privacy.
    name = getattr(dst, "name", None)
    spool_dir = None
    if isinstance(name, (str, bytes)):
        spool_dir = os.path.dirname(os.fsdecode(name)) or None
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        digest = _open_into(src, keyring, team, expected_header=expected_header, dst=spool)
        _check(digest, expected)
        spool.seek(0)
        shutil.copyfileobj(spool, dst, 1 << 20)
    return digest


def decrypt_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Decrypt the envelope file ``src`` to the file ``dst`` (mode 0600).

    ``dst`` appears only once every tag verified and, when ``expected`` is
    given, both digests and sizes match it; otherwise IntegrityError and no
    file. Returns the digests.
    """
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as out, open(src, "rb") as inp:
            digest = _open_into(inp, keyring, team, expected_header=expected_header, dst=out)
        _check(digest, expected)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


class _Discard:
    def write(self, data) -> int:
        return len(data)


def verify_stream(
    src: BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> StreamDigest:
    """Authenticate a whole envelope and return its digests, keeping no plaintext."""
    digest = _open_into(src, keyring, team, expected_header=expected_header, dst=_Discard())
    _check(digest, expected)
    return digest


def decrypt_bytes(
    src: str | os.PathLike | BinaryIO,
    keyring: KeyRing,
    team: str,
    *,
    expected_header: EnvelopeHeader | None = None,
    expected: StreamDigest | None = None,
) -> bytearray:
    """The whole plaintext of an envelope in memory, returned only once verified.

    For artifacts that end up in memory anyway (a model about to be loaded):
    no plaintext touches disk. With ``expected`` the buffer is allocated once
    at the signed size and the plaintext hash is skipped, because the signed
    ciphertext digest already pins every plaintext byte.
    """
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as handle:
            return decrypt_bytes(
                handle, keyring, team, expected_header=expected_header, expected=expected
            )
    if expected is None:
        spool = io.BytesIO()
        _open_into(src, keyring, team, expected_header=expected_header, dst=spool)
        return bytearray(spool.getbuffer())
    buffer = bytearray(expected.size)
    digest = _open_into(
        src, keyring, team, expected_header=expected_header, into=buffer
    )
    _check(digest, expected)
    return buffer


__all__ = [
    "CHUNK_SIZE",
    "EnvelopeHeader",
    "KeyRing",
    "PublicKeyFile",
    "PublicKeyRecord",
    "SealedWriter",
    "StreamDigest",
    "canonical_json",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_stream",
    "read_header",
    "seal_stream",
    "sign_manifest",
    "verify_manifest",
    "verify_stream",
]
